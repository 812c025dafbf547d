"""Stage 3a, training library + search space -> Optuna study: objective and worker loop (study.py), storage URLs
(storage.py), the study report (report.py). Search spaces are in the top-level `studies/` package."""
