"""Stage 4, an ensemble (or a list of runs) -> one student model that learns from it: the distillation loss and the
teacher's targets (kd.py), the teacher read from its ensemble entry (teacher.py) and the student trained by the
shared trainer into a normal run folder (distill.py). It reads the ensembling stage's entries and the training
stage's run artifacts; no earlier stage imports it. Importing the package loads nothing heavy."""
