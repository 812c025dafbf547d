"""The multi-attribute training loss: one treated, smoothed cross-entropy per attribute head, summed or weighted.

Each attribute's class-imbalance treatment comes from its loss scheme (schemes.py, which says how a treatment is
applied). Why per-sample weights and not PyTorch's `cross_entropy(weight=w, label_smoothing=e)`: that form also
weights each class's smoothing term by w_c, which pulls every prediction toward rare classes (with weights
[1, 1, 100] and e = 0.1 a class-0 label is best answered with p = [0.22, 0.01, 0.78]). Here the loss of a one-hot
label is minimised by predicting that label, for every scheme and e < 1 - 1/K.
Task weighting: `uniform` sums the per-attribute losses; `uncertainty` learns one log-variance s_i per attribute:
sum_i exp(-s_i) L_i + s_i / 2 (Kendall et al., CVPR 2018).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.training.schemes import class_weights, treatment  # noqa: F401  (class_weights re-exported)
from zoo.recipes import CHOICES

TASK_WEIGHTINGS = CHOICES["task_weighting"]


class MultiAttributeLoss(nn.Module):
    """Sum (or learned weighting) of one weighted, smoothed cross-entropy per attribute head."""

    def __init__(self, counts: list, scheme: str = "none", beta: float = 0.999, gamma: float = 2.0,
                 label_smoothing: float = 0.0, task_weighting: str = "uniform", recipe=None):
        """`recipe`, when given, supplies every scheme parameter (beta and gamma are then ignored)."""
        super().__init__()
        if task_weighting not in TASK_WEIGHTINGS:
            raise ValueError(f"unknown task weighting {task_weighting!r}; choose one of {TASK_WEIGHTINGS}")
        params = recipe if recipe is not None else {"loss_beta": beta, "focal_gamma": gamma}
        treatments = [treatment(c, scheme, params) for c in counts]
        for i, t in enumerate(treatments):
            self.register_buffer(f"w{i}", torch.tensor(t.weights, dtype=torch.float32))
            if t.offsets is not None:
                self.register_buffer(f"o{i}", torch.tensor(t.offsets, dtype=torch.float32), persistent=False)
        self.n = len(counts)
        self.gammas = [t.gamma for t in treatments]
        self.label_smoothing = label_smoothing
        self.log_vars = nn.Parameter(torch.zeros(self.n)) if task_weighting == "uncertainty" else None

    def per_attribute(self, logits: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """Each head's mean loss over the images labelled for it: a missing label (-1) is masked out, and a head
        with no label in the batch contributes 0 (not NaN)."""
        losses = []
        for i, z in enumerate(logits):
            z, labelled = z.float(), targets[:, i] >= 0
            t = targets[:, i].clamp_min(0)
            if hasattr(self, f"o{i}"):
                z = z + getattr(self, f"o{i}")
            logp = F.log_softmax(z, -1)
            logp_true = logp.gather(1, t[:, None]).squeeze(1)
            ce = -logp_true
            if self.label_smoothing:
                ce = (1 - self.label_smoothing) * ce - self.label_smoothing * logp.mean(-1)
            ce = getattr(self, f"w{i}")[t] * ce
            if self.gammas[i]:
                # clamped: for gamma < 1 the derivative of (1 - p)^gamma is infinite at p = 1, which a confidently
                # fitted sample reaches in float32 (NaN gradients); 1e-12^gamma is negligible anyway
                ce = (-torch.expm1(logp_true)).clamp_min(1e-12).pow(self.gammas[i]) * ce
            losses.append((ce * labelled).sum() / labelled.sum().clamp_min(1))
        return torch.stack(losses)

    def forward(self, logits: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        per = self.per_attribute(logits, targets)
        if self.log_vars is None:
            return per.sum()
        return (torch.exp(-self.log_vars) * per + 0.5 * self.log_vars).sum()
