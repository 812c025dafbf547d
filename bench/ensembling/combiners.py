"""Probability combiners: how the members' class probabilities for one attribute become the ensemble's.

A combiner is written once, in torch operations: it receives `stack` (M members, N images, k classes) and `w` (M,)
non-negative weights summing to 1 (tensors of one dtype on one device) and returns (N, k) probabilities.
`bench.ensemble --combine NAME` picks one; every weighting (weightings.py) works with every combiner, since
weightings only ever call `combine`.

`combine` below is the one definition of a combination: each member's (N, sum k) probabilities split per attribute,
that attribute's weights normalised to sum to 1, the combiner applied (one member is its own combination). Every
place that combines calls it: bench.ensemble and its weightings, bench.predict and the cached teacher targets of
bench.distill with numpy arrays (computed in float64, numpy back), the online teacher with tensors on the training
device, and bench.export, which traces it into the ONNX graph. So a new combiner works in all of them, and they
cannot disagree (tests/test_ensemble.py checks numpy, torch and onnxruntime against each other).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from bench.registry import Registry

if TYPE_CHECKING:
    import torch  # imported where a combination runs: `--help` of the commands answers before torch loads

COMBINERS = Registry("combiner")


@COMBINERS.register
def mean(stack: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """weighted arithmetic mean of the probabilities"""
    return (w[:, None, None] * stack).sum(0)


@COMBINERS.register
def geometric(stack: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """weighted geometric mean, renormalised (a weighted mean of log-probabilities)"""
    # a zero probability counts as 1e-8 (probabilities are <= 1; clamp with both bounds does not export to ONNX)
    return (w[:, None, None] * stack.clamp_min(1e-8).log()).sum(0).softmax(-1)


def combine(probs, weights, num_classes, method: str = "mean"):
    """Weighted combination per attribute of the members' (N, sum k) probability blocks.

    `probs`: M numpy arrays (the result is a float64 numpy array) or M tensors on one device (the result is a tensor
    there, float64 for float64 input, else float32). `weights`: (M,) or (M, attributes), numpy or a tensor; each
    attribute's weights are normalised to sum to 1. A single member is returned as it is."""
    import torch
    combiner = COMBINERS[method]
    if len(probs) == 1:
        return probs[0]
    as_numpy = isinstance(probs[0], np.ndarray)
    if as_numpy:
        probs = [torch.from_numpy(np.asarray(p, dtype=np.float64)) for p in probs]
    dtype = torch.float64 if probs[0].dtype == torch.float64 else torch.float32
    probs = [p.to(dtype) for p in probs]
    w = torch.as_tensor(weights, dtype=dtype, device=probs[0].device)
    if w.ndim == 1:
        w = w[:, None].expand(-1, len(num_classes))
    if tuple(w.shape) != (len(probs), len(num_classes)):
        raise ValueError(f"weights of shape {tuple(w.shape)} for {len(probs)} members and {len(num_classes)} "
                         f"attributes")
    w = w / w.sum(0, keepdim=True).clamp_min(1e-12)
    blocks = [torch.split(p, list(num_classes), 1) for p in probs]
    out = torch.cat([combiner(torch.stack([b[a] for b in blocks]), w[:, a]) for a in range(len(num_classes))], 1)
    return out.numpy() if as_numpy else out
