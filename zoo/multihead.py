"""Backbone features -> one classifier head per attribute."""
from __future__ import annotations

import torch
from torch import nn


class MultiHeadNet(nn.Module):
    """`backbone` must return pooled features (timm models built with num_classes=0 do)."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: tuple[int, ...],
                 dropout: float = 0.2, hidden: int = 0):
        super().__init__()
        self.backbone = backbone
        self.num_classes = tuple(num_classes)
        width = num_features
        if hidden:  # shared hidden layer, as in the fashionnet recipe
            self.neck = nn.Sequential(nn.Linear(num_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
            width = hidden
        else:
            self.neck = nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleList(nn.Linear(width, k) for k in self.num_classes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = self.dropout(self.neck(self.backbone(x)))
        return [head(z) for head in self.heads]
