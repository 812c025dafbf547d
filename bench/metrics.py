"""Metrics shared by every command. Inputs are (N, 6) integer arrays of labels and predictions.

overall accuracy      correct attribute predictions / (N x 6)  -- the 2023 challenge's metric, the leaderboard's
class-average acc.    accuracy of each of the 26 classes (correct / images of that class), then the plain mean over
                      the classes present in the labels -- the 2024 challenge's "average per-class accuracy"
per-attribute acc.    accuracy of each attribute on its own
mean per-class acc.   (key mean_class_acc) balanced accuracy: recall of every class present in the labels, averaged
                      within each attribute, then over the 6 attributes, so a 3-class attribute weighs as much as
                      the 7-class one; NOT the challenge's class average above
macro-F1              sklearn's macro F1 per attribute, averaged over the 6 attributes
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

from bench.data import ATTRIBUTES, class_counts


def _check(y_true: np.ndarray, y_pred: np.ndarray) -> None:
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise ValueError(f"labels {y_true.shape} and predictions {y_pred.shape} must both be (N, attributes)")


def overall_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    _check(y_true, y_pred)
    return float((y_true == y_pred).mean())


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes) -> list[np.ndarray]:
    """Recall of each class per attribute; NaN for classes absent from the labels."""
    out = []
    for a, k in enumerate(num_classes):
        present = np.bincount(y_true[:, a], minlength=k) > 0
        rec = recall_score(y_true[:, a], y_pred[:, a], labels=np.arange(k), average=None, zero_division=0)
        out.append(np.where(present, rec, np.nan))
    return out


def class_average_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes) -> float:
    """The 2024 challenge metric: per-class accuracy of every class present in the labels, plain mean over them all
    (each of the 26 classes weighs the same, whatever its attribute)."""
    return float(np.nanmean(np.concatenate(per_class_accuracy(y_true, y_pred, num_classes))))


def score(y_true: np.ndarray, y_pred: np.ndarray, num_classes) -> dict:
    """All leaderboard metrics as plain floats/lists (JSON-ready)."""
    _check(y_true, y_pred)
    per_attr = [float((y_true[:, a] == y_pred[:, a]).mean()) for a in range(y_true.shape[1])]
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected on small splits
        warnings.simplefilter("ignore", UserWarning)
        balanced = [float(balanced_accuracy_score(y_true[:, a], y_pred[:, a])) for a in range(y_true.shape[1])]
    f1 = [float(f1_score(y_true[:, a], y_pred[:, a], average="macro")) for a in range(y_true.shape[1])]
    return {
        "overall_acc": overall_accuracy(y_true, y_pred),
        "class_avg_acc": class_average_accuracy(y_true, y_pred, num_classes),
        "mean_class_acc": float(np.mean(balanced)),
        "macro_f1": float(np.mean(f1)),
        "attr_acc": dict(zip(ATTRIBUTES, per_attr)),
        "class_acc": [[None if np.isnan(v) else float(v) for v in c]
                      for c in per_class_accuracy(y_true, y_pred, num_classes)],
        "n": int(len(y_true)),
    }


def majority_from_counts(counts, n: int) -> np.ndarray:
    """Predict each attribute's most frequent training class (from per-class counts) for all n images."""
    return np.tile(np.array([int(np.argmax(c)) for c in counts], dtype=np.int64), (n, 1))


def majority_prediction(train_labels: np.ndarray, num_classes, n: int) -> np.ndarray:
    return majority_from_counts(class_counts(train_labels, num_classes), n)


def split_probs(probs: np.ndarray, num_classes) -> list[np.ndarray]:
    edges = np.cumsum([0, *num_classes])
    return [probs[:, edges[i]:edges[i + 1]] for i in range(len(num_classes))]


def probs_to_pred(probs: np.ndarray, num_classes) -> np.ndarray:
    return np.stack([p.argmax(1) for p in split_probs(probs, num_classes)], 1)


def format_score(s: dict, title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"overall accuracy     {s['overall_acc']:.4f}   (n={s['n']} images x {len(s['attr_acc'])} attributes)")
    lines.append(f"class-average acc.   {s['class_avg_acc']:.4f}   (mean accuracy over the classes present; 2024 challenge)")
    lines.append(f"balanced acc.        {s['mean_class_acc']:.4f}   (per attribute, then mean over attributes)")
    lines.append(f"macro-F1             {s['macro_f1']:.4f}")
    lines.append("per attribute        " + "  ".join(f"{k} {v:.3f}" for k, v in s["attr_acc"].items()))
    return "\n".join(lines)
