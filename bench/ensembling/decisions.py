"""Decision rules: how combined class probabilities become one predicted class per attribute.

A rule receives (N, sum k) probabilities, the class counts per attribute and its fitted parameters, and returns
(N, attributes) ints. `bench.ensemble --decision NAME` picks one.
"""
from __future__ import annotations

import numpy as np

from bench.metrics import probs_to_pred
from bench.registry import Registry

DECISIONS = Registry("decision rule")


@DECISIONS.register
def argmax(probs: np.ndarray, num_classes, **params) -> np.ndarray:
    """the most probable class of each attribute"""
    return probs_to_pred(probs, num_classes)
