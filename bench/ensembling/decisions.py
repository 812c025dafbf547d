"""Decision rules: how class probabilities become one predicted class per attribute, fitted for the target metric.

A rule receives (N, sum k) probabilities, the class counts per attribute, the training class frequencies `prior`
(one array per attribute) and its parameters, and returns (N, attributes) ints. A rule with a `grid` (parameter ->
candidate values, the neutral value first) has one parameter value per attribute, fitted by `fit_rule`; since both
target metrics are sums of per-attribute shares (bench.metrics.attribute_gain), each attribute's value is chosen
on its own, the smallest among equally good ones. `bench.ensemble --decision NAME` picks a rule.
"""
from __future__ import annotations

import numpy as np

from bench.metrics import attribute_gain, split_probs
from bench.registry import Registry

DECISIONS = Registry("decision rule")


@DECISIONS.register
def argmax(probs: np.ndarray, num_classes, prior=None, params: dict | None = None) -> np.ndarray:
    """the most probable class of each attribute"""
    return np.stack([p.argmax(1) for p in split_probs(probs, num_classes)], 1)


@DECISIONS.register
def logit_adjusted(probs: np.ndarray, num_classes, prior, params: dict | None = None) -> np.ndarray:
    """post-hoc logit adjustment: argmax_y p(y|x) / pi_y^tau, tau >= 0 fitted per attribute (Menon et al. 2021)"""
    taus = (params or {}).get("tau") or [0.0] * len(num_classes)
    out = []
    for p, pi, tau in zip(split_probs(probs, num_classes), prior, taus):
        out.append((np.log(np.clip(p, 1e-12, 1)) - tau * np.log(np.clip(pi, 1e-12, 1))).argmax(1))
    return np.stack(out, 1)


logit_adjusted.grid = {"tau": [round(0.1 * i, 1) for i in range(31)]}  # 0 (plain argmax) .. 3


def prior_from_counts(counts) -> list[np.ndarray]:
    """Training class frequencies per attribute (a class never seen counts as one image, as in the loss)."""
    return [np.maximum(np.asarray(c, float), 1) / np.maximum(np.asarray(c, float), 1).sum() for c in counts]


def fit_rule(name: str, probs: np.ndarray, labels: np.ndarray, num_classes, prior, metric: str) -> dict:
    """The rule's parameters maximising `metric` on these labelled probabilities ({} for a rule without a grid)."""
    rule = DECISIONS[name]
    grid = getattr(rule, "grid", None)
    if not grid:
        return {}
    params = {k: [values[0]] * len(num_classes) for k, values in grid.items()}
    for key, values in grid.items():
        for a, k in enumerate(num_classes):
            best = None
            for v in values:  # ascending from the neutral value: ties keep the smaller adjustment
                trial = {**params, key: [*params[key][:a], v, *params[key][a + 1:]]}
                gain = attribute_gain(labels[:, a], rule(probs, num_classes, prior, trial)[:, a], k, metric)
                if best is None or gain > best[0] + 1e-12:
                    best = gain, v
            params[key][a] = best[1]
    return params


def decide(name: str, probs: np.ndarray, num_classes, prior, params: dict | None = None) -> np.ndarray:
    return DECISIONS[name](probs, num_classes, prior, params or {})
