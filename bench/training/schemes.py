"""Loss schemes: the class-imbalance treatment of each attribute's cross-entropy. One decorated function each.

A scheme receives one attribute's training class counts n (classes never seen in training count as 1 sample) and
its parameters (`params.loss_beta` etc.: the recipe's fields of those names, defaults in PARAMS), and returns a
`Treatment`; this module imports nothing from zoo/ (a recipe validates its `loss` against LOSSES, one way); the recipe field `loss`, `bench.run --loss`, the tune
space and the report's class-weight figure all read this registry. The trainer's loss (losses.py) applies a
treatment per sample i of class y as
    w_y * [(1 - e) * -log q_y + e * mean_c(-log q_c)] * (1 - q_y)^gamma,   q = softmax(z + offsets)
with e the label smoothing, so the weight scales the whole sample and the smoothing target stays uniform. Offsets
act in training only: predictions use the plain logits z.
Weights are normalised so that the average weight per training sample is 1 (sum_c w_c n_c = N), which keeps loss
scales comparable across schemes. Logit offsets (logit_adjusted) teach the model p(y|x) / pi_y^tau directly, where
class weights would fight label smoothing; its post-hoc twin is the ensembler's logit_adjusted decision rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Mapping

import numpy as np

from bench.registry import Registry

LOSSES = Registry("loss scheme")

# The schemes' parameters and their defaults; zoo/recipes.py's Recipe has a field of each name with this default.
PARAMS = {"loss_beta": 0.999, "focal_gamma": 2.0, "logit_tau": 1.0}


@dataclass(frozen=True)
class Treatment:
    weights: np.ndarray               # per class; any positive scale (normalised by `treatment`)
    offsets: np.ndarray | None = None  # per class, added to the logits in training only
    gamma: float = 0.0                # focal exponent


@LOSSES.register
def none(n: np.ndarray, params) -> Treatment:
    """plain cross-entropy, w_c = 1"""
    return Treatment(np.ones_like(n))


@LOSSES.register
def inverse(n: np.ndarray, params) -> Treatment:
    """w_c ∝ 1 / n_c (the fashionnet recipe; sklearn's 'balanced')"""
    return Treatment(1.0 / n)


@LOSSES.register
def sqrt_inverse(n: np.ndarray, params) -> Treatment:
    """w_c ∝ 1 / sqrt(n_c), softer"""
    return Treatment(1.0 / np.sqrt(n))


@LOSSES.register
def effective(n: np.ndarray, params) -> Treatment:
    """w_c ∝ (1 - beta) / (1 - beta^n_c), the effective number of samples (Cui et al., CVPR 2019; loss_beta)"""
    beta = params.loss_beta
    return Treatment((1.0 - beta) / (1.0 - np.power(beta, n)))


@LOSSES.register
def focal(n: np.ndarray, params) -> Treatment:
    """w_c = 1, each sample scaled by (1 - p_true)^gamma (Lin et al. 2017; focal_gamma)"""
    return Treatment(np.ones_like(n), gamma=params.focal_gamma)


def scheme_params(source: Mapping | object | None = None) -> SimpleNamespace:
    """The schemes' parameters from a mapping or an object with those attributes (a Recipe), PARAMS where absent."""
    get = source.get if isinstance(source, Mapping) else (lambda k, d: getattr(source, k, d))
    return SimpleNamespace(**{k: (d if source is None else get(k, d)) for k, d in PARAMS.items()})


def treatment(counts, scheme: str, params: Mapping | object | None = None) -> Treatment:
    """The scheme's treatment of one attribute, weights normalised to a mean of 1 per training sample; `params`
    (a mapping, or a recipe) supplies the scheme parameters, PARAMS where it does not."""
    n = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    t = LOSSES[scheme](n, scheme_params(params))
    w = np.asarray(t.weights, np.float64)
    return Treatment(w * n.sum() / (w * n).sum(), t.offsets, t.gamma)


def class_weights(counts, scheme: str = "none", beta: float = PARAMS["loss_beta"]) -> np.ndarray:
    """Normalised class weights of a scheme for one attribute (beta: the effective scheme's parameter)."""
    return treatment(counts, scheme, {"loss_beta": beta}).weights


@LOSSES.register
def logit_adjusted(n: np.ndarray, params) -> Treatment:
    """cross-entropy on logits + tau log pi_c (logit_tau; 1 = balanced softmax; Menon et al. 2021, Ren et al. 2020)"""
    return Treatment(np.ones_like(n), offsets=params.logit_tau * np.log(n / n.sum()))
