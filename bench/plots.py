"""Matplotlib figures shared by training and reports (Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench.artifacts import atomic_write  # noqa: E402


def plot_curves(history: pd.DataFrame, path: Path, title: str = "") -> Path:
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(history["epoch"], history["train_loss"], label="train")
    a.plot(history["epoch"], history["val_loss"], label="val")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend()
    b.plot(history["epoch"], history["overall_acc"], label="overall")
    if "class_avg_acc" in history:  # histories written before the class average was tracked lack it
        b.plot(history["epoch"], history["class_avg_acc"], label="class-average")
    b.plot(history["epoch"], history["mean_class_acc"], label="balanced", alpha=0.5)
    b.set_xlabel("epoch"), b.set_ylabel("val accuracy"), b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90))
    plt.close(fig)
    return path
