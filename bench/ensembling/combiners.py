"""Probability combiners: how the members' class probabilities for one attribute become the ensemble's.

A combiner receives `stack` (M members, N images, k classes) and `w` (M non-negative weights summing to 1) and
returns (N, k) probabilities. `bench.ensemble --combine NAME` picks one; every weighting (weightings.py) works with
every combiner, since weightings only ever call `combine`.
"""
from __future__ import annotations

import numpy as np

from bench.metrics import split_probs
from bench.registry import Registry

COMBINERS = Registry("combiner")


@COMBINERS.register
def mean(stack: np.ndarray, w: np.ndarray) -> np.ndarray:
    """weighted arithmetic mean of the probabilities"""
    return np.tensordot(w, stack, 1)


@COMBINERS.register
def geometric(stack: np.ndarray, w: np.ndarray) -> np.ndarray:
    """weighted geometric mean, renormalised (a weighted mean of log-probabilities)"""
    z = np.tensordot(w, np.log(np.clip(stack, 1e-8, 1)), 1)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# The same combiners on torch tensors, for code that combines on the device or inside an exported graph (bench.distill's
# online teacher, bench.export's ONNX graph): stack (M, N, k), w (M, 1, 1) summing to 1 over M. Each is its numpy
# function's formula in ops that torch.onnx.export traces (probabilities are <= 1, so clamp_min is geometric's clip).
TORCH_COMBINERS = {
    "mean": lambda stack, w: (w * stack).sum(0),
    "geometric": lambda stack, w: (w * stack.clamp_min(1e-8).log()).sum(0).softmax(-1),
}


def combine(probs: list[np.ndarray], weights: np.ndarray, num_classes, method: str = "mean") -> np.ndarray:
    """Weighted combination per attribute of (N, sum k) probability blocks. `weights` is (M,) or (M, attributes);
    each attribute's weights are normalised to sum to 1."""
    combiner = COMBINERS[method]
    w = np.asarray(weights, float)
    if w.ndim == 1:
        w = np.repeat(w[:, None], len(num_classes), 1)
    parts = []
    for a, block in enumerate(zip(*[split_probs(p, num_classes) for p in probs])):
        parts.append(combiner(np.stack(block), w[:, a] / max(w[:, a].sum(), 1e-12)))
    return np.concatenate(parts, 1)
