"""Ensemble weightings: how much each member counts, fitted on labelled probabilities.

A weighting receives the members' (N, sum k) probabilities, the labels (N, attributes), the class counts, the
combiner's name (combiners.py), whether to fit per attribute, a seed and the target metric (bench.metrics.TARGETS);
it returns weights (M,), or (M, attributes) per attribute. `bench.ensemble --weights NAME` picks one; the ensembler cross-validates any fitted weighting.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from bench.ensembling.combiners import COMBINERS, combine
from bench.metrics import attribute_gain, split_probs
from bench.registry import Registry

WEIGHTINGS = Registry("ensemble weighting")


@WEIGHTINGS.register
def uniform(probs, labels, num_classes, method="mean", per_attribute: bool = False, seed: int = 0,
            metric: str = "overall") -> np.ndarray:
    """every member counts the same (nothing fitted)"""
    return np.ones(len(probs)) / len(probs)


@WEIGHTINGS.register
def fitted(probs, labels, num_classes, method="mean", per_attribute: bool = False, seed: int = 0,
           metric: str = "overall") -> np.ndarray:
    """weights minimising the log-loss on the fitting images (softmax-parameterised, so on the simplex)

    Log-loss whatever the target metric: a proper score is smooth to optimise, and the decision rule (decisions.py)
    then turns the probabilities into the metric's best decisions."""
    m, n_attr = len(probs), len(num_classes)

    def weights_for(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    def fit(cols):
        def loss(z):
            w = np.zeros((m, n_attr))
            w[:, cols] = weights_for(z)[:, None]
            w[:, [c for c in range(n_attr) if c not in cols]] = 1
            return _attr_nll(combine(probs, w, num_classes, method), labels, num_classes)[cols].mean()
        return weights_for(minimize(loss, np.zeros(m), method="L-BFGS-B").x)

    if not per_attribute:
        return fit(list(range(n_attr)))
    return np.stack([fit([a]) for a in range(n_attr)], 1)


@WEIGHTINGS.register
def caruana(probs, labels, num_classes, method="mean", per_attribute: bool = False, seed: int = 0,
            metric: str = "overall", iters: int = 25, init: int = 2, bags: int = 20, bag_frac: float = 0.6) -> np.ndarray:
    """Caruana et al.'s ensemble selection (ICML 2004), bagged: weights = how often each member was picked

    Forward selection with replacement from a sorted initialisation, in bags of a fraction of the members; each bag
    returns the ensemble at its best-scoring size along the selection path (sizes init .. init + iters), not the
    last one. Candidates are scored by the target metric of the combination's argmax with them added (log-loss
    breaks ties), through the chosen combiner; the weights are the pick counts averaged over bags.
    """
    m, n_attr = len(probs), len(num_classes)
    COMBINERS[method]  # an unknown combiner fails before any work
    blocks = [np.stack(b).astype(np.float64) for b in zip(*[split_probs(p, num_classes) for p in probs])]  # (M, N, k)
    rows = np.arange(len(labels))

    def quality(counts: np.ndarray, attrs) -> tuple[float, float]:
        acc, nll = [], []
        for a in attrs:
            avg = combine(list(blocks[a]), counts, (num_classes[a],), method)
            acc.append(attribute_gain(labels[:, a], avg.argmax(1), num_classes[a], metric))
            nll.append(-np.log(np.clip(avg[rows, labels[:, a]], 1e-8, 1)).mean())
        return float(np.mean(acc)), -float(np.mean(nll))

    rng = np.random.default_rng(seed)
    groups = [[a] for a in range(n_attr)] if per_attribute else [list(range(n_attr))]
    total = np.zeros((m, n_attr))
    for _ in range(max(1, bags)):
        size = max(min(m, 2), round(m * bag_frac))  # a one-member bag would force a weak member in
        pool = list(range(m)) if bags <= 1 else sorted(rng.choice(m, size, replace=False).tolist())
        for attrs in groups:
            counts = np.zeros(m)
            one = np.eye(m)

            def gain(i):
                return quality(counts + one[i], attrs)

            for i in sorted(pool, key=lambda i: quality(one[i], attrs), reverse=True)[:init]:
                counts[i] += 1  # sorted initialisation with the best few members
            best = quality(counts, attrs), counts.copy()
            for _ in range(iters):  # forward selection with replacement, even when every candidate makes it worse
                gains = {i: gain(i) for i in pool}
                counts[i := max(pool, key=gains.get)] += 1
                if gains[i] > best[0]:  # strictly: the smallest ensemble among equally good ones
                    best = gains[i], counts.copy()
            total[:, attrs] += (best[1] / best[1].sum())[:, None]
    w = total / total.sum(0, keepdims=True)
    return w if per_attribute else w[:, 0]


def _attr_nll(probs: np.ndarray, labels: np.ndarray, num_classes) -> np.ndarray:
    """Mean log-loss per attribute over its labelled images (a missing label, -1, counts nowhere; 0 without any)."""
    out = []
    for a, p in enumerate(split_probs(probs, num_classes)):
        rows = np.flatnonzero(labels[:, a] >= 0)
        out.append(-np.log(np.clip(p[rows, labels[rows, a]], 1e-8, 1)).mean() if len(rows) else 0.0)
    return np.array(out)
