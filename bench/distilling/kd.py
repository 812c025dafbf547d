"""The distillation loss, per attribute head, and the teacher's re-tempered targets.

For each attribute head i with student logits z_i, teacher distribution p_i (the ensemble's combined probabilities
for that attribute, its weights and combiner) and the label y_i:

    L_i = alpha * T^2 * KL(q_i || softmax(z_i / T)) + (1 - alpha) * CE_recipe(z_i, y_i)
    q_i = p_i^(1/T) / sum_c p_ic^(1/T)  =  softmax(log p_i / T)

and the loss is the sum over heads (or the recipe's learned task weighting of the L_i): every head is its own
softmax, never one softmax over all heads' logits. Re-tempering the teacher's *probabilities* this way is exactly
what tempering its logits would give for one model (softmax(z / T) = softmax(log softmax(z) / T)); for an
ensemble it tempers the combined distribution, which has no logits of its own. T^2 keeps the soft term's gradient
on the scale of the hard term's as T changes (Hinton et al. 2015). CE_recipe is the recipe's own loss
(bench/training/losses.py: its class-imbalance scheme, label smoothing and logit offsets); it is the mean over the
images labelled for that head (a missing label, -1, adds nothing), while the KL term is the mean over every image
of the batch: an image without a label (or one only the teacher labelled, --unlabelled) still learns from the
teacher. alpha = 0 is the recipe's plain loss; alpha = 1 is the teacher's targets alone (MEAL V2).

Mixup (bench.distill --mode views --mixup ALPHA): an image x' = lam x_r + (1 - lam) x_s has the teacher's
distribution on x' itself as its KD target (the teacher labelled that very image), and the recipe's loss on the
mixed label, the usual mixup loss lam CE(z, y_r) + (1 - lam) CE(z, y_s) per head: per head the sum over the batch of
lam m_r CE(z, y_r) + (1 - lam) m_s CE(z, y_s) divided by the sum of lam m_r + (1 - lam) m_s (m: 1 where the head
is labelled), which is the recipe's masked mean when every lam is 1 (`mixed_per_attribute`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.distilling import DEFAULT_ALPHA, DEFAULT_TEMPERATURE  # noqa: F401  (their reasons: __init__.py)


def retemper(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """p^(1/T) renormalised over the last axis, computed as softmax(log p / T) (probabilities clamped at 1e-8)."""
    return torch.softmax(torch.log(p.float().clamp_min(1e-8)) / temperature, -1)


def split_heads(probs: torch.Tensor, num_classes) -> list[torch.Tensor]:
    return list(torch.split(probs, list(num_classes), dim=-1))


def kd_per_head(logits: list[torch.Tensor], teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """(heads,) KL(q_i || softmax(z_i / T)) per head, each the mean over the batch, where q_i is the teacher's
    distribution for head i (a block of the concatenated `teacher` probabilities) re-tempered by T."""
    heads = split_heads(teacher, [z.shape[-1] for z in logits])
    out = []
    for z, p in zip(logits, heads):
        log_student = F.log_softmax(z.float() / temperature, -1)
        out.append(F.kl_div(log_student, retemper(p, temperature), reduction="sum") / max(len(z), 1))
    return torch.stack(out)


def mixed_per_attribute(base: nn.Module, logits: list[torch.Tensor], labels: torch.Tensor, partner: torch.Tensor,
                        lam: torch.Tensor) -> torch.Tensor:
    """(heads,) the recipe's loss `base` (its per_attribute, per row) on mixup labels: rows whose image is lam x_r +
    (1 - lam) x_s carry labels y_r (`labels`) and y_s (`partner`); per head, sum_r [lam m_r CE(z, y_r) + (1 - lam)
    m_s CE(z, y_s)] / sum_r [lam m_r + (1 - lam) m_s], 0 for a head labelled nowhere."""
    per_row = torch.func.vmap(lambda zs, y: base.per_attribute([z[None] for z in zs], y[None]))
    a, b = per_row(logits, labels), per_row(logits, partner)  # a row alone: its masked loss, m * CE
    lam = lam.float()[:, None]
    num = (lam * a + (1 - lam) * b).sum(0)
    den = (lam * (labels >= 0).float() + (1 - lam) * (partner >= 0).float()).sum(0)
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))


class DistillLoss(nn.Module):
    """alpha * T^2 * KL + (1 - alpha) * the recipe's loss, per head, combined like the recipe's loss (a sum, or its
    learned uncertainty weighting). The trainer calls it as its criterion, `loss(logits, labels)`, once per
    micro-batch of a step, in order: `set_targets` gives it the whole step's teacher probabilities first, and each
    call takes the next len(labels) rows of them."""

    def __init__(self, base: nn.Module, temperature: float = DEFAULT_TEMPERATURE, alpha: float = DEFAULT_ALPHA):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature {temperature}: must be > 0")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha {alpha}: must be in [0, 1]")
        self.base, self.temperature, self.alpha = base, float(temperature), float(alpha)
        self.targets: torch.Tensor | None = None
        self.mix: tuple[torch.Tensor, torch.Tensor] | None = None
        self.cursor = 0

    @property
    def log_vars(self):
        return self.base.log_vars

    def set_targets(self, targets: torch.Tensor, mix: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """The step's teacher probabilities and, for mixup views, (the partners' labels, lam) per row."""
        self.targets, self.mix, self.cursor = targets, mix, 0

    def forward(self, logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        n = len(labels)
        if self.targets is None or self.cursor + n > len(self.targets):
            raise RuntimeError("DistillLoss: no teacher targets for this batch (set_targets first)")
        rows = slice(self.cursor, self.cursor + n)
        self.cursor += n
        mix = None if self.mix is None else (self.mix[0][rows], self.mix[1][rows])
        return self.loss(logits, labels, self.targets[rows], mix)

    def parts(self, logits, labels, teacher, mix=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(KD term per head, the recipe's loss per head), unweighted; `mix`: (partner labels, lam) per row."""
        ce = self.base.per_attribute(logits, labels) if mix is None else \
            mixed_per_attribute(self.base, logits, labels, *mix)
        return kd_per_head(logits, teacher, self.temperature), ce

    def loss(self, logits: list[torch.Tensor], labels: torch.Tensor, teacher: torch.Tensor,
             mix: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        kd, ce = self.parts(logits, labels, teacher, mix)
        per = self.alpha * self.temperature ** 2 * kd + (1 - self.alpha) * ce
        if self.base.log_vars is None:
            return per.sum()
        return (torch.exp(-self.base.log_vars) * per + 0.5 * self.base.log_vars).sum()
