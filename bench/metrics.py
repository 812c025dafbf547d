"""Metrics shared by every command. Inputs are (N, A) integer arrays of labels and predictions, one column per
attribute (the FashionDataset: A = 6 attributes with 26 classes in all).

overall accuracy      correct attribute predictions / (N x A)  -- the 2023 challenge's metric, the leaderboard's
class-average acc.    accuracy of each class of every attribute (correct / images of that class), then the plain mean
                      over the classes present in the labels -- the 2024 challenge's "average per-class accuracy"
per-attribute acc.    accuracy of each attribute on its own
mean per-class acc.   (key mean_class_acc) balanced accuracy: recall of every class present in the labels, averaged
                      within each attribute, then over the A attributes, so a 3-class attribute weighs as much as
                      a 7-class one; NOT the challenge's class average above
macro-F1              sklearn's macro F1 per attribute, averaged over the A attributes

A label of -1 is missing (a CSV dataset's empty cell): every metric counts labelled cells only. Overall accuracy is
correct / labelled (image, attribute) cells, an attribute's accuracy is over its labelled images, and a class is
present when it has labelled images; `missing` counts the missing cells.
"""
from __future__ import annotations


import numpy as np

from bench.data import attribute_names, class_counts

# The target metric a user chooses once (--metric), by the name a challenge gives it -> its score key.
TARGETS = {"overall": "overall_acc", "class": "class_avg_acc"}
TARGET_HELP = ("target metric: overall = overall accuracy (2023 challenge), class = average per-class accuracy over "
               "every class of every attribute (2024 challenge)")


def _check(y_true: np.ndarray, y_pred: np.ndarray) -> None:
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise ValueError(f"labels {y_true.shape} and predictions {y_pred.shape} must both be (N, attributes)")


MISSING = -1  # the label of a missing (image, attribute) cell


def overall_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Correct / labelled cells."""
    _check(y_true, y_pred)
    labelled = y_true != MISSING
    return float((y_true == y_pred)[labelled].sum() / max(labelled.sum(), 1))


def confusion(t: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    """(k, k) counts: row = true class, column = predicted class (sklearn's confusion_matrix over labels 0..k-1,
    without its per-call input validation, which cost most of a report's build; tests/test_score.py checks every
    figure derived from it against sklearn)."""
    return np.bincount(np.asarray(t, np.int64) * k + np.asarray(p, np.int64), minlength=k * k).reshape(k, k)


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes) -> list[np.ndarray]:
    """Recall of each class per attribute; NaN for classes absent from the labels."""
    out = []
    for a, k in enumerate(num_classes):
        cm = confusion(*_labelled(y_true, y_pred, a), k)
        rows = cm.sum(1)
        out.append(np.where(rows > 0, np.diag(cm) / np.maximum(rows, 1), np.nan))
    return out


def class_average_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes) -> float:
    """The 2024 challenge metric: per-class accuracy of every class present in the labels, plain mean over them all
    (each class weighs the same, whatever its attribute)."""
    return mean_of_classes(per_class_accuracy(y_true, y_pred, num_classes))


def mean_of_classes(per_class: list[np.ndarray]) -> float:
    """The plain mean of per_class_accuracy's output over every class present (NaN: absent)."""
    return float(np.nanmean(np.concatenate(per_class)))


def _labelled(y_true: np.ndarray, y_pred: np.ndarray, a: int) -> tuple[np.ndarray, np.ndarray]:
    """Attribute a's labels and predictions on its labelled images."""
    keep = y_true[:, a] != MISSING
    return y_true[keep, a], y_pred[keep, a]


def score(y_true: np.ndarray, y_pred: np.ndarray, num_classes, attributes=None) -> dict:
    """All leaderboard metrics as plain floats/lists (JSON-ready); `attr_acc` is keyed by the attribute names
    (`attributes`, else bench.data.attribute_names' fallback)."""
    _check(y_true, y_pred)
    cols = [_labelled(y_true, y_pred, a) for a in range(y_true.shape[1])]
    per_attr = [float((t == p).mean()) if len(t) else float("nan") for t, p in cols]
    balanced, f1 = [], []
    for (t, p), k in zip(cols, num_classes):
        if not len(t):
            balanced.append(float("nan"))
            f1.append(float("nan"))
            continue
        cm = confusion(t, p, k)
        rows, columns, hits = cm.sum(1), cm.sum(0), np.diag(cm)
        # balanced accuracy (sklearn's balanced_accuracy_score): mean recall over the classes in the labels
        balanced.append(float(np.mean(hits[rows > 0] / rows[rows > 0])))
        # macro-F1 (sklearn's f1_score, average="macro"): mean over the classes in the labels or the predictions
        seen = (rows > 0) | (columns > 0)
        f1.append(float(np.mean(2 * hits[seen] / (rows[seen] + columns[seen]))))
    per_class = per_class_accuracy(y_true, y_pred, num_classes)
    return {
        "overall_acc": overall_accuracy(y_true, y_pred),
        "class_avg_acc": mean_of_classes(per_class),
        "mean_class_acc": float(np.nanmean(balanced)) if not np.isnan(balanced).all() else float("nan"),
        "macro_f1": float(np.nanmean(f1)) if not np.isnan(f1).all() else float("nan"),
        "attr_acc": dict(zip(attribute_names(num_classes, attributes), per_attr)),
        "class_acc": [[None if np.isnan(v) else float(v) for v in c] for c in per_class],
        "n": int(len(y_true)),
        "missing": int((y_true == MISSING).sum()),
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


METRIC_NAMES = {"overall_acc": "overall accuracy", "class_avg_acc": "class-average accuracy"}
SHORT_NAMES = {"overall_acc": "overall acc.", "class_avg_acc": "class-average acc."}
CHALLENGES = {"overall_acc": "2023", "class_avg_acc": "2024"}  # the FashionDataset challenges' metrics


def metric_name(key: str, challenge: bool, short: bool = False) -> str:
    """A challenge metric's name as every report and command prints it: with its challenge's year only for a
    FashionDataset-layout dataset (`challenge`); a CSV dataset's metrics are named by what they are."""
    name = (SHORT_NAMES if short else METRIC_NAMES)[key]
    if not challenge:
        return name
    return f"{name} ({CHALLENGES[key]})" if short else f"{name} ({CHALLENGES[key]} challenge)"


def format_score(s: dict, title: str = "", challenge: bool = True) -> str:
    """Both challenge metrics, balanced accuracy, macro-F1 and per-attribute accuracy as printed lines; the
    challenges are named only for a FashionDataset-layout dataset (`challenge`, see metric_name)."""
    lines = [title] if title else []
    missing = f", {s['missing']} missing labels" if s.get("missing") else ""
    lines.append(f"overall accuracy     {s['overall_acc']:.4f}   (n={s['n']} images x {len(s['attr_acc'])} attributes"
                 f"{missing})")
    year = "; 2024 challenge" if challenge else ""
    lines.append(f"class-average acc.   {s['class_avg_acc']:.4f}   (mean accuracy over the classes present{year})")
    lines.append(f"balanced acc.        {s['mean_class_acc']:.4f}   (per attribute, then mean over attributes)")
    lines.append(f"macro-F1             {s['macro_f1']:.4f}")
    lines.append("per attribute        " + "  ".join(f"{k} {v:.3f}" for k, v in s["attr_acc"].items()))
    return "\n".join(lines)


def image_parts(y_true: np.ndarray, correct: np.ndarray, num_classes, metric: str = "overall"):
    """A metric as a ratio of per-image sums: (num, den), both (N, G), such that the metric is the mean over the
    groups g with any image of sum_i num_ig / sum_i den_ig. Resampling or sign-flipping images then works for
    both challenge metrics alike (bench/stats.py).
      overall  G = 1: num_i = correct labelled attributes of image i, den_i = its labelled attributes
      class    G = every class of every attribute: num_ig = 1 if image i is of class g and predicted right, den_ig = 1 if of class g
    Missing cells (label -1) count in neither."""
    y_true = np.asarray(y_true)
    labelled = y_true != MISSING
    correct = np.asarray(correct, bool).reshape(len(correct), -1) & labelled
    if TARGETS.get(metric, metric) == "overall_acc":
        return correct.sum(1, keepdims=True).astype(float), labelled.sum(1, keepdims=True).astype(float)
    if TARGETS.get(metric, metric) != "class_avg_acc":
        raise ValueError(f"no per-image form for metric {metric!r}; choose one of {', '.join(TARGETS)}")
    offsets = np.cumsum([0, *num_classes])[:-1]
    den = np.zeros((len(correct), int(sum(num_classes))))
    rows, cols = np.nonzero(labelled)
    g = y_true[rows, cols] + offsets[cols]
    den[rows, g] = 1
    num = np.zeros_like(den)
    num[rows, g] = correct[rows, cols]
    return num, den


def attribute_gain(y_true: np.ndarray, y_pred: np.ndarray, k: int, metric: str) -> float:
    """One attribute's share of a target metric, up to a constant factor common to all attributes: its accuracy
    (overall) or the sum of its present classes' recalls (class). Both metrics are sums of these over attributes,
    so a per-attribute decision parameter can be fitted attribute by attribute. Missing labels (-1) count
    nowhere: for overall, its correct labelled cells / all images (the images, not its labelled ones, so that the
    sum over attributes stays proportional to correct / labelled cells)."""
    keep = y_true != MISSING
    n_images = max(len(y_true), 1)
    y_true, y_pred = y_true[keep], y_pred[keep]
    if TARGETS.get(metric, metric) == "overall_acc":
        return float((y_true == y_pred).sum() / n_images)
    n = np.bincount(y_true, minlength=k)
    hit = np.bincount(y_true[y_true == y_pred], minlength=k)
    present = n > 0
    return float((hit[present] / n[present]).sum())
