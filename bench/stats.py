"""Honest comparisons on the same validation images.

Resampling is over images: each image's attribute predictions stay together, since errors on one image are
correlated (a hard image is often wrong on several attributes); tests that count the N x A predictions as
independent trials (e.g. a flattened McNemar test) reject equal models far more often than their nominal level.

A metric enters as per-image parts (num, den), each (N, G), with the metric = mean over groups g that have any image
of sum_i num_ig / sum_i den_ig (bench.metrics.image_parts): overall accuracy is one group, the 2024 challenge's
class average one group per class. Without `den`, `num` is the (N, A) correct-attribute array of overall accuracy.

A bootstrap resample must score the same groups as the sample: one that lost every image of a rare class (val has
3 square-neckline images: about 5% of resamples lose them) would average over 25 classes instead of 26, a different
metric that is biased (upwards for a model that misses the rare class), and the interval could then exclude the
score itself. Such resamples are redrawn, so the intervals are conditional on every class being present.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse


def _parts(num: np.ndarray, den: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    num = np.asarray(num, float)
    if den is None:  # overall accuracy from (N, 6) correct attributes
        num = num.reshape(len(num), -1).mean(1, keepdims=True)
        return num, np.ones_like(num)
    return num, np.asarray(den, float)


def _counts(idx: np.ndarray, n: int) -> sparse.csr_array:
    """(rows, n): how often each image was drawn in each row of resampled indices, as a sparse matrix (each row
    holds one entry per draw; a product with it sums repeated draws): `_counts(idx, n) @ x` is x summed over each
    row's draws, ten times faster than a dense count matrix filled with np.add.at (which took 2/3 of a report's
    build time)."""
    rows, k = idx.shape
    return sparse.csr_array((np.ones(idx.size), idx.ravel(), np.arange(0, rows * k + 1, k)), shape=(rows, n))


def _resampled(num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The metric on each row of image indices (rows, N), over the groups present in the whole sample (every row
    must hold an image of each: see `_resamples`)."""
    present = den.sum(0) > 0
    w = _counts(idx, len(num))
    return ((w @ num[:, present]) / (w @ den[:, present])).mean(1)


def _resamples(den: np.ndarray, n_boot: int, rng: np.random.Generator, max_rounds: int = 50) -> np.ndarray:
    """`n_boot` bootstrap rows of image indices, each holding at least one image of every group present in the
    sample (rows that lose a group are redrawn; module docstring)."""
    present = den.sum(0) > 0
    rows, kept = [], 0
    for _ in range(max_rounds):
        idx = rng.integers(0, len(den), size=(n_boot, len(den)))
        ok = ((_counts(idx, len(den)) @ den[:, present]) > 0).all(1)
        rows.append(idx[ok])
        kept += int(ok.sum())
        if kept >= n_boot:
            return np.concatenate(rows)[:n_boot]
    raise ValueError(f"bootstrap: fewer than {n_boot} of {max_rounds * n_boot} resamples hold every class; a class "
                     f"with this few images has no meaningful interval")


def bootstrap_ci(correct: np.ndarray, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0,
                 den: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile interval of the metric over images resampled with replacement (`correct` is num when `den`
    is given), conditional on every group of the sample being present."""
    num, den = _parts(correct, den)
    rng = np.random.default_rng(seed)
    vals = _resampled(num, den, _resamples(den, n_boot, rng))
    return float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, n_boot: int = 2000, alpha: float = 0.05,
                     seed: int = 0, den: np.ndarray | None = None) -> dict:
    """Metric difference a - b on the same images, with its percentile interval (both resampled together)."""
    a, d_ = _parts(correct_a, den)
    b, _ = _parts(correct_b, den)
    rng = np.random.default_rng(seed)
    idx = _resamples(d_, n_boot, rng)
    boots = _resampled(a, d_, idx) - _resampled(b, d_, idx)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    full = np.arange(len(a))[None]
    delta = _resampled(a, d_, full)[0] - _resampled(b, d_, full)[0]
    return {"delta": float(delta), "lo": float(lo), "hi": float(hi)}


def image_diff(correct_a: np.ndarray, correct_b: np.ndarray, den: np.ndarray | None = None) -> np.ndarray:
    """Per image: its share of metric(a) - metric(b), so the shares sum to the difference. Without `den`: correct
    attributes of a minus those of b (integers, so sums below are exact)."""
    if den is None:
        n = len(correct_a)
        return correct_a.reshape(n, -1).astype(np.int64).sum(1) - correct_b.reshape(n, -1).astype(np.int64).sum(1)
    totals = np.asarray(den, float).sum(0)
    present = totals > 0
    scale = np.where(present, 1 / np.where(present, totals, 1), 0) / present.sum()
    return (np.asarray(correct_a, float) - np.asarray(correct_b, float)) @ scale


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
