"""Stage 3a, training library + search space -> Optuna study: objective and worker loop (study.py), storage URLs
(storage.py), the study report (report.py), the search spaces (spaces.py)."""
