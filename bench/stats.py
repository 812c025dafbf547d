"""Honest comparisons on the same validation images.

Resampling is over images: each image's 6 attribute predictions stay together, since errors on one image are
correlated (a hard image is often wrong on several attributes); tests that count the N x 6 predictions as
independent trials (e.g. a flattened McNemar test) reject equal models far more often than their nominal level.
"""
from __future__ import annotations

import numpy as np


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


def image_diff(correct_a: np.ndarray, correct_b: np.ndarray) -> np.ndarray:
    """Per image: correct attributes of a minus those of b (integers, so sums below are exact)."""
    n = len(correct_a)
    return correct_a.reshape(n, -1).astype(np.int64).sum(1) - correct_b.reshape(n, -1).astype(np.int64).sum(1)


def sign_flip_p(diff: np.ndarray, n_perm: int = 10000, seed: int = 0, chunk: int = 512) -> np.ndarray:
    """Two-sided paired permutation p-value of mean(diff) = 0, flipping the sign of each image's difference.

    `diff` is (N,) or (S, N) per-image differences (S tests at once, same sign flips). Exact (all 2^N flips) when
    2^N <= n_perm, else `n_perm` seeded random flips with p = (hits + 1) / (n_perm + 1), so p is never 0.
    """
    d = np.atleast_2d(np.asarray(diff, float))
    n = d.shape[1]
    obs = np.abs(d.sum(1))
    exact = n < 63 and 2 ** n <= n_perm
    rng = np.random.default_rng(seed)
    hits, total, done = np.zeros(len(d)), 2 ** n if exact else n_perm, 0
    while done < total:
        m = min(chunk, total - done)
        if exact:  # rows are the binary digits of done .. done + m - 1
            signs = 1 - 2 * ((np.arange(done, done + m)[:, None] >> np.arange(n)) & 1)
        else:
            signs = 1 - 2 * rng.integers(0, 2, (m, n))
        hits += (np.abs(d @ signs.T) >= obs[:, None] - 1e-9).sum(1)  # integer sums: the tolerance is only for ties
        done += m
    p = hits / total if exact else (hits + 1) / (total + 1)
    return p if np.ndim(diff) == 2 else p[0]


def holm(p) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family-wise error over all the given tests), in the input order."""
    p = np.asarray(p, float)
    order = np.argsort(p, kind="stable")
    adj = np.maximum.accumulate(np.minimum(1, (len(p) - np.arange(len(p))) * p[order]))
    out = np.empty_like(p)
    out[order] = adj
    return out
