"""Stage 2, dataset + zoo model -> trained model and its artifacts: the shared trainer (trainer.py: one model's loop,
batched on-device augmentation in augment.py), the loss (losses.py) and its class-imbalance schemes (schemes.py),
training one model end to end into a run folder (train.py), and the throughput benchmark (throughput.py).
Importing the package loads nothing heavy; trainer.py, losses.py and train.py load torch."""
