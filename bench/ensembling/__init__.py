"""Stage 3b, run artifacts -> ensemble and submission: members, cross-validation and output (ensemble.py), with one
registry per choice: weightings.py, combiners.py, decisions.py, and TTA views (views.py);
combiners and views are torch operations, imported only when they run."""
