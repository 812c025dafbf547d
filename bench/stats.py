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

Replicas (one model trained once per seed, bench/replicas.py) add a second source of noise: retraining. A row's
replicas are scored on the same images, so their spread over seeds is the retraining noise on these images, and the
image noise of their seed mean is what resampling the images would move it by. `seed_interval` and `seed_compare`
add the two variances (seed: s^2 / S over the S replicas; images: the delta-method variance of the seed mean,
`influence`, less the flips between seeds that s^2 already holds) and use Student's t with Welch-Satterthwaite
degrees of freedom (S - 1 for the seed part, N - 1 for the images). A bootstrap over 3 seeds cannot do this: resampling 3 values understates their spread (by (S-1)/S, and
its percentiles come from at most 10 distinct means), so its intervals are too narrow whenever retraining noise
matters; scripts/seed_calibration.py measures both (reports/reference/seeds.md).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy import stats as sps


# this module's own bytes: part of every ResultCache key, so a cache written by other statistics code (an upgrade,
# a fix) is not read as this code's numbers
CODE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


class ResultCache:
    """Results of this module's resampling functions (bootstrap_ci, paired_bootstrap), keyed by the sha256 of their
    inputs' bytes, parameters and this module's code (CODE): they are deterministic (seeded), so a cached result is
    the cold build's number.
    `bench.report` keeps one beside the leaderboard (.stats-cache.json), so a rebuild after one new
    run resamples for that run (and for the comparisons whose leader changed) only. Only the entries a build used
    are written back (and nothing when that is what the file holds), so it never grows beyond one build's."""

    def __init__(self, path: Path | None = None):
        self.path, self.used, self.hits, self.misses = path, {}, 0, 0
        self.stored = {}
        if path is not None:
            try:
                self.stored = json.loads(Path(path).read_text())
            except (OSError, ValueError):  # none yet, or unreadable: computed again
                self.stored = {}

    @staticmethod
    def key(name: str, arrays, params) -> str:
        h = hashlib.sha256(json.dumps([name, params, CODE], sort_keys=True).encode())
        for a in arrays:
            a = np.ascontiguousarray(a if a is not None else np.zeros(0))
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def get(self, key: str):
        if key in self.stored:
            self.hits += 1
            self.used[key] = self.stored[key]
            return self.stored[key]
        self.misses += 1
        return None

    def put(self, key: str, value) -> None:
        self.used[key] = value

    def save(self) -> None:
        if self.path is not None and self.path.parent.is_dir() and self.used != self.stored:
            from bench.artifacts import atomic_write
            text = json.dumps(self.used)
            atomic_write(self.path, lambda tmp: tmp.write_text(text))


_cache: ResultCache | None = None


@contextlib.contextmanager
def results_cache(path: str | Path | None):
    """Within the block, bootstrap_ci and paired_bootstrap read and write the cache at `path` (saved at the end);
    yields the cache (its hits and misses say what was reused)."""
    global _cache
    previous, _cache = _cache, ResultCache(Path(path) if path is not None else None)
    try:
        yield _cache
        _cache.save()
    finally:
        _cache = previous


def _memo(name: str, arrays, params: dict, compute):
    """compute(), or its cached result (results_cache) for these inputs."""
    if _cache is None or os.environ.get("FASHION_BENCH_NO_STATS_CACHE"):
        return compute()
    key = ResultCache.key(name, arrays, params)
    hit = _cache.get(key)
    if hit is not None:
        return hit
    value = compute()
    _cache.put(key, value)
    return value


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


def _resampled(num: np.ndarray, den: np.ndarray, idx) -> np.ndarray:
    """The metric on each row of image indices (rows, N), or of a `_counts` matrix of them, over the groups present
    in the whole sample (every row must hold an image of each: see `_resamples`)."""
    present = den.sum(0) > 0
    w = idx if sparse.issparse(idx) else _counts(idx, len(num))
    return ((w @ num[:, present]) / (w @ den[:, present])).mean(1)


_RESAMPLES: dict[tuple, np.ndarray] = {}


def _resamples(den: np.ndarray, n_boot: int, seed: int, max_rounds: int = 50) -> sparse.csr_array:
    """`n_boot` bootstrap rows of image indices drawn from `seed`, each holding at least one image of every group
    present in the sample (rows that lose a group are redrawn; module docstring), as their `_counts` matrix. They
    depend on the groups' images (`den`), not on the predictions, so every entry scored on the same images reuses
    them (kept per process)."""
    key = (hashlib.sha256(np.ascontiguousarray(den > 0).tobytes()).hexdigest(), den.shape, n_boot, seed)
    if key not in _RESAMPLES:
        if len(_RESAMPLES) > 16:
            _RESAMPLES.clear()
        idx = _draw_resamples(den, n_boot, np.random.default_rng(seed), max_rounds)
        _RESAMPLES[key] = _counts(idx, len(den))  # what every use multiplies by (_resampled)
    return _RESAMPLES[key]


def _draw_resamples(den: np.ndarray, n_boot: int, rng: np.random.Generator, max_rounds: int) -> np.ndarray:
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

    def compute():
        vals = _resampled(num, den, _resamples(den, n_boot, seed))
        return [float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))]

    return tuple(_memo("bootstrap_ci", (num, den), {"n_boot": n_boot, "alpha": alpha, "seed": seed}, compute))


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, n_boot: int = 2000, alpha: float = 0.05,
                     seed: int = 0, den: np.ndarray | None = None) -> dict:
    """Metric difference a - b on the same images, with its percentile interval (both resampled together)."""
    a, d_ = _parts(correct_a, den)
    b, _ = _parts(correct_b, den)

    def compute():
        idx = _resamples(d_, n_boot, seed)
        boots = _resampled(a, d_, idx) - _resampled(b, d_, idx)
        lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
        full = np.arange(len(a))[None]
        delta = _resampled(a, d_, full)[0] - _resampled(b, d_, full)[0]
        return {"delta": float(delta), "lo": float(lo), "hi": float(hi)}

    return dict(_memo("paired_bootstrap", (a, b, d_), {"n_boot": n_boot, "alpha": alpha, "seed": seed}, compute))


def image_diff(correct_a: np.ndarray, correct_b: np.ndarray, den: np.ndarray | None = None) -> np.ndarray:
    """Per image: its share of metric(a) - metric(b), so the shares sum to the difference. Without `den`: correct
    attributes of a minus those of b (integers, so sums below are exact; a mean over seeds stays a float)."""
    if den is None:
        n = len(correct_a)
        a, b = (np.asarray(x).reshape(n, -1) for x in (correct_a, correct_b))
        exact = np.int64 if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(b.dtype, np.floating)) else float
        return a.astype(exact).sum(1) - b.astype(exact).sum(1)
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


def format_p(p: float, digits: int = 2, level: float = 0.05) -> str:
    """p to `digits` significant figures, with as many more as it takes to keep the printed value on the same side
    of `level` as p (0.0496 prints 0.0496, not 0.05, beside a verdict that p < 0.05 decided); every p a report
    prints goes through here, so a reader never sees "p 0.05" next to "different at 5%"."""
    p = float(p)
    for d in range(digits, 18):
        text = format(p, f".{d}g")
        if (float(text) < level) == (p < level):
            return text
    return repr(p)


def holm(p) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family-wise error over all the given tests), in the input order."""
    p = np.asarray(p, float)
    order = np.argsort(p, kind="stable")
    adj = np.maximum.accumulate(np.minimum(1, (len(p) - np.arange(len(p))) * p[order]))
    out = np.empty_like(p)
    out[order] = adj
    return out


def influence(num: np.ndarray, den: np.ndarray | None = None) -> np.ndarray:
    """Per image, its first-order share of the metric's deviation (the delta method's influence values; they sum
    to 0): the variance of the metric over image resamples is about sum(influence ** 2). For each group g with any
    image, (num_ig - R_g den_ig) / sum_i den_ig with R_g the group's ratio, averaged over the groups (the metric is
    their plain mean)."""
    num, den = _parts(num, den)
    present = den.sum(0) > 0
    n, d = num[:, present], den[:, present]
    tot = d.sum(0)
    return ((n - n.sum(0) / tot * d) / tot).mean(1)


def welch_df(parts: list[tuple[float, float]]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of variance estimates, each (variance, its degrees of
    freedom): (sum v)^2 / sum(v^2 / df); inf when no part has variance."""
    total = sum(v for v, _ in parts)
    denom = sum(v * v / df for v, df in parts if v > 0 and df > 0)
    return float(total * total / denom) if denom > 0 else float("inf")


def _seed_part(values) -> tuple[float, int]:
    """(variance of the seed mean s^2 / S, its degrees of freedom S - 1) of per-seed scores; (0, 0) for one seed."""
    v = np.asarray(values, float)
    return (float(v.var(ddof=1) / len(v)), len(v) - 1) if len(v) > 1 else (0.0, 0)


def _influences(nums, den) -> np.ndarray:
    """(S, N): each replica's influence values (`influence`), from its per-image parts nums[s]."""
    return np.stack([influence(n, den) for n in nums])


def _flips(u: np.ndarray) -> float:
    """The part of the image variance of a seed mean that is retraining noise: per image, the variance of its
    influence over the S replicas (predictions that flip between seeds) / S, summed; 0 for one replica. The seed
    variance s^2 / S counts it already (a replica's score moves by the sum of its flips), so the image term drops
    it: otherwise it would be counted twice, and the test lose power exactly where retraining noise is small."""
    return float(u.var(0, ddof=1).sum() / len(u)) if len(u) > 1 else 0.0


def seed_interval(values, nums, den: np.ndarray | None = None, alpha: float = 0.05) -> dict:
    """The interval of a row of replicas: `values` (S,) the metric of each replica, `nums` their per-image parts
    (S arrays, bench.metrics.image_parts; one `den` for all, as they share the images). Mean +- t * se, se^2 = s^2 / S
    (the seed variance of the mean) + the image variance of the seed mean without its retraining part (delta method,
    `_flips`), t with Welch-Satterthwaite degrees of freedom (S - 1 and N - 1; module docstring), kept inside
    [0, 1] (the metrics are shares: with 2 or 3 seeds t is large). {mean, lo, hi, sd (over seeds), min, max, se,
    df}."""
    v = np.asarray(values, float)
    u = _influences(nums, den)
    seed = _seed_part(v)
    image = (max(float((u.mean(0) ** 2).sum()) - _flips(u), 0.0), u.shape[1] - 1)
    se = float(np.sqrt(seed[0] + image[0]))
    df = welch_df([seed, image])
    half = float(sps.t.ppf(1 - alpha / 2, df) * se) if se > 0 else 0.0
    m = float(v.mean())
    return {"mean": m, "lo": max(m - half, 0.0), "hi": min(m + half, 1.0),
            "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "se": se, "df": df}


SE_ZERO = 1e-12  # a standard error of a share below this is rounding, not variance (real ones are >= ~1e-4)


def seed_compare(values_a, values_b, nums_a, nums_b, den: np.ndarray | None = None, alpha: float = 0.05) -> dict:
    """Row a against row b on the same images, counting retraining and images: `values_*` each row's per-replica
    metric, `nums_*` its replicas' per-image parts (one `den`). Δ = mean(a) - mean(b) with its t interval and
    two-sided p; se^2 = s_a^2 / S_a + s_b^2 / S_b + the image variance of the paired difference of the seed means
    without its retraining part (`_flips`), Welch-Satterthwaite degrees of freedom. A row with one replica adds no
    seed variance: its retraining noise is then not counted. The interval is kept inside [-1, 1] (a difference of
    shares). Where se is 0 (below SE_ZERO: no seed spread, and every image moves the difference alike; rounding
    leaves ~1e-17 rather than 0) the t test has no scale:
    p is then the exact or random sign-flip p of the seed means' per-image differences (`sign_flip_p`, which needs
    none), never 0 for a handful of images that all agree. {delta, lo, hi, p, se, df}."""
    a, b = np.asarray(values_a, float), np.asarray(values_b, float)
    ua, ub = _influences(nums_a, den), _influences(nums_b, den)
    image = max(float(((ua.mean(0) - ub.mean(0)) ** 2).sum()) - _flips(ua) - _flips(ub), 0.0)
    parts = [_seed_part(a), _seed_part(b), (image, ua.shape[1] - 1)]
    se = float(np.sqrt(sum(v for v, _ in parts)))
    df = welch_df(parts)
    delta = float(a.mean() - b.mean())
    if se < SE_ZERO:
        mean_a, mean_b = (np.mean(np.asarray(x, float), 0) for x in (nums_a, nums_b))  # seed means: not integers
        p = float(sign_flip_p(image_diff(mean_a, mean_b, den))) if delta else 1.0
        return {"delta": delta, "lo": delta, "hi": delta, "p": p, "se": 0.0, "df": df}
    half = float(sps.t.ppf(1 - alpha / 2, df) * se)
    p = float(2 * sps.t.sf(abs(delta) / se, df))
    return {"delta": delta, "lo": max(delta - half, -1.0), "hi": min(delta + half, 1.0), "p": min(1.0, p), "se": se,
            "df": df}
