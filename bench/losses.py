"""Class-imbalance treatments and multi-task weighting for the 6 attribute heads.

Class weights (per attribute, from training counts n_c; all normalised so that the average weight per training
sample is 1, i.e. sum_c w_c n_c = N, which keeps loss scales comparable across schemes):
  none          w_c = 1
  inverse       w_c ∝ 1 / n_c                        (the fashionnet recipe; = sklearn's "balanced")
  sqrt_inverse  w_c ∝ 1 / sqrt(n_c)                  (softer)
  effective     w_c ∝ (1 - beta) / (1 - beta^n_c)    (Cui et al., CVPR 2019, "effective number of samples")
  focal         w_c = 1, loss scaled by (1 - p_true)^gamma (Lin et al. 2017)
Each combines with label smoothing, applied per sample: sample i of class y costs
  w_y * [(1 - e) * -log p_y + e * mean_c(-log p_c)]      (times (1 - p_y)^gamma for focal)
so the weight scales the whole sample and the smoothing target stays uniform over classes. (PyTorch's
`cross_entropy(weight=w, label_smoothing=e)` also weights each class's smoothing term by w_c, which pulls every
prediction toward rare classes: with weights [1, 1, 100] and e = 0.1 a class-0 label is best answered with
p = [0.22, 0.01, 0.78].) With this form the loss of a one-hot label is minimised by predicting that label, for every
scheme and e < 1 - 1/K. Task weighting: `uniform` sums the 6 losses; `uncertainty` learns one
log-variance s_i per attribute: sum_i exp(-s_i) L_i + s_i / 2 (Kendall et al., CVPR 2018).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.recipes import CHOICES

SCHEMES = CHOICES["loss"]
TASK_WEIGHTINGS = CHOICES["task_weighting"]


def class_weights(counts, scheme: str = "none", beta: float = 0.999) -> np.ndarray:
    """Weights for one attribute's classes; classes never seen in training count as 1 sample."""
    n = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    if scheme in ("none", "focal"):
        raw = np.ones_like(n)
    elif scheme == "inverse":
        raw = 1.0 / n
    elif scheme == "sqrt_inverse":
        raw = 1.0 / np.sqrt(n)
    elif scheme == "effective":
        raw = (1.0 - beta) / (1.0 - np.power(beta, n))
    else:
        raise ValueError(f"unknown loss scheme {scheme!r}; choose one of {SCHEMES}")
    return raw * n.sum() / (raw * n).sum()


class MultiAttributeLoss(nn.Module):
    """Sum (or learned weighting) of one weighted, smoothed cross-entropy per attribute head."""

    def __init__(self, counts: list, scheme: str = "none", beta: float = 0.999, gamma: float = 2.0,
                 label_smoothing: float = 0.0, task_weighting: str = "uniform"):
        super().__init__()
        if task_weighting not in TASK_WEIGHTINGS:
            raise ValueError(f"unknown task weighting {task_weighting!r}; choose one of {TASK_WEIGHTINGS}")
        for i, c in enumerate(counts):
            self.register_buffer(f"w{i}", torch.tensor(class_weights(c, scheme, beta), dtype=torch.float32))
        self.n = len(counts)
        self.gamma = gamma if scheme == "focal" else 0.0
        self.label_smoothing = label_smoothing
        self.log_vars = nn.Parameter(torch.zeros(self.n)) if task_weighting == "uncertainty" else None

    def per_attribute(self, logits: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        losses = []
        for i, z in enumerate(logits):
            z, t = z.float(), targets[:, i]
            logp = F.log_softmax(z, -1)
            logp_true = logp.gather(1, t[:, None]).squeeze(1)
            ce = -logp_true
            if self.label_smoothing:
                ce = (1 - self.label_smoothing) * ce - self.label_smoothing * logp.mean(-1)
            ce = getattr(self, f"w{i}")[t] * ce
            if self.gamma:
                # clamped: for gamma < 1 the derivative of (1 - p)^gamma is infinite at p = 1, which a confidently
                # fitted sample reaches in float32 (NaN gradients); 1e-12^gamma is negligible anyway
                ce = (-torch.expm1(logp_true)).clamp_min(1e-12).pow(self.gamma) * ce
            losses.append(ce.mean())
        return torch.stack(losses)

    def forward(self, logits: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        per = self.per_attribute(logits, targets)
        if self.log_vars is None:
            return per.sum()
        return (torch.exp(-self.log_vars) * per + 0.5 * self.log_vars).sum()
