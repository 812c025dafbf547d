"""Backbone features -> one fused classifier for all attribute heads.

The model takes float pixels in 0..255 (what the trainer's uint8 data becomes on the device) and normalises them
itself with its backbone's own mean/std (timm's data config: ImageNet's for most models, 0.5/0.5 for the
`tf_efficientnet_lite*` family and `tf_efficientnetv2_*`). The constants are non-persistent buffers, so they live
on the model's device (no per-step host-to-device copy) and every caller (training, validation, TTA recomputation,
bench.speed) normalises exactly as the backbone expects without having to know.
"""
from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MultiHeadNet(nn.Module):
    """`backbone` must return pooled features (timm models built with num_classes=0 do)."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: tuple[int, ...],
                 dropout: float = 0.2, hidden: int = 0, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.backbone = backbone
        self.num_classes = tuple(num_classes)
        self.input_config = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255,
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255,
                             persistent=False)
        width = num_features
        if hidden:  # shared hidden layer, as in the fashionnet recipe
            self.neck = nn.Sequential(nn.Linear(num_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
            width = hidden
        else:
            self.neck = nn.Identity()
        self.dropout = nn.Dropout(dropout)
        # one matmul for all heads; the output is split per attribute
        self.head = nn.Linear(width, sum(self.num_classes))

    def set_input_config(self, mean, std) -> None:
        """Normalise with these constants instead (e.g. the ones a checkpoint was trained with)."""
        self.input_config = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
        self.pixel_mean.copy_(torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.pixel_std.copy_(torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (B, 3, H, W) float pixels in 0..255 -> one logit tensor per attribute."""
        x = (x - self.pixel_mean) / self.pixel_std
        z = self.dropout(self.neck(self.backbone(x)))
        return list(torch.split(self.head(z), self.num_classes, dim=1))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints written before the heads were fused hold heads.<i>.weight/bias: concatenate them."""
        old = [k for k in state_dict if k.startswith(prefix + "heads.")]
        if old:
            for kind in ("weight", "bias"):
                parts = [state_dict.pop(f"{prefix}heads.{i}.{kind}") for i in range(len(self.num_classes))]
                state_dict[f"{prefix}head.{kind}"] = torch.cat(parts, 0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
