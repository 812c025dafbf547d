"""Stage 4, an ensemble (or a list of runs) -> one student model that learns from it: the distillation loss and the
teacher's targets (kd.py), the teacher read from its ensemble entry (teacher.py) and the student trained by the
shared trainer into a normal run folder (distill.py). It reads the ensembling stage's entries and the training
stage's run artifacts; no earlier stage imports it. Importing the package loads nothing heavy."""

# Defaults of bench.distill --temperature / --alpha (recorded in each student's run.json), here so that --help reads
# them without loading torch. T = 2: softer than the teacher's own distribution, so the student sees the ensemble's
# ranking of the wrong classes (Hinton et al. 2015 used 2-20; members that are already soft need little). alpha = 0.5:
# half labels, half teacher, the usual start for a short schedule, where the labels still carry most of the signal.
# Neither is measured on fashion-dev yet: issue #25's measurement decides (reports/reference/distill.md).
DEFAULT_TEMPERATURE = 2.0
DEFAULT_ALPHA = 0.5
