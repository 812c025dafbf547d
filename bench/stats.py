"""Honest comparisons on the same validation images.

Resampling is over images (each image's 6 attribute predictions stay together: they are not independent).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import binomtest


def bootstrap_ci(correct: np.ndarray, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of overall accuracy; `correct` is (N, 6) bool (or (N,) fractions per image)."""
    per_image = correct.reshape(len(correct), -1).mean(1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_image), size=(n_boot, len(per_image)))
    means = per_image[idx].mean(1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, n_boot: int = 2000, alpha: float = 0.05,
                     seed: int = 0) -> dict:
    """Accuracy difference a - b with its percentile interval and a two-sided bootstrap p-value."""
    a = correct_a.reshape(len(correct_a), -1).mean(1)
    b = correct_b.reshape(len(correct_b), -1).mean(1)
    d = a - b
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    tail = min((boots <= 0).sum(), (boots >= 0).sum())
    p = min(1.0, 2 * (tail + 1) / (n_boot + 1)) if d.any() else 1.0  # never exactly 0 from a finite resample
    return {"delta": float(d.mean()), "lo": float(lo), "hi": float(hi), "p": float(p)}


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact McNemar test on paired predictions (each image-attribute pair is one trial)."""
    a, b = correct_a.ravel().astype(bool), correct_b.ravel().astype(bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else float(binomtest(only_a, n, 0.5).pvalue)
    return {"only_a": only_a, "only_b": only_b, "p": p}
