"""Batched augmentation on uint8 image tensors already on the training device.

One affine warp per image does random-resized-crop, horizontal flip and rotation in a single `grid_sample`; colour
jitter is three per-image scalars. A whole batch is augmented in a few kernel launches, with no CPU workers.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.485, 0.456, 0.406]) * 255
STD = torch.tensor([0.229, 0.224, 0.225]) * 255


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Float pixels in 0..255 -> ImageNet-normalised, channels_last (fastest layout for convolutions)."""
    mean, std = MEAN.to(x.device, x.dtype).view(1, 3, 1, 1), STD.to(x.device, x.dtype).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def normalize(x_uint8: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> normalised float32, channels_last: the evaluation transform."""
    return standardize(x_uint8.float())


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def augment(x_uint8: torch.Tensor, g: torch.Generator, crop_scale: float = 0.35, hflip: bool = True,
            rotate: float = 10.0, jitter: float = 0.2, out_size: int | None = None) -> torch.Tensor:
    """Random resized crop (area in [crop_scale, 1], aspect in [3/4, 4/3]), flip, rotation, colour jitter."""
    b, _, h, w = x_uint8.shape
    dev = x_uint8.device
    x = x_uint8.float()
    if crop_scale < 1.0 or hflip or rotate:
        area = _uniform(b, crop_scale, 1.0, g, dev)
        log_r = _uniform(b, math.log(3 / 4), math.log(4 / 3), g, dev)
        sx = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)  # crop width / image width
        sy = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
        tx = (_uniform(b, -1.0, 1.0, g, dev) * (1 - sx))
        ty = (_uniform(b, -1.0, 1.0, g, dev) * (1 - sy))
        angle = _uniform(b, -rotate, rotate, g, dev) * (math.pi / 180)
        flip = torch.where(torch.rand(b, generator=g, device=dev) < 0.5, -1.0, 1.0) if hflip else torch.ones(b, device=dev)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([
            torch.stack([sx * cos * flip, -sy * sin, tx], 1),
            torch.stack([sx * sin * flip, sy * cos, ty], 1),
        ], 1)
        size = out_size or h
        grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if jitter:
        bright = _uniform(b, 1 - jitter, 1 + jitter, g, dev).view(b, 1, 1, 1)
        contrast = _uniform(b, 1 - jitter, 1 + jitter, g, dev).view(b, 1, 1, 1)
        sat = _uniform(b, 1 - jitter, 1 + jitter, g, dev).view(b, 1, 1, 1)
        x = x * bright
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = (x - grey.mean((2, 3), keepdim=True)) * contrast + grey.mean((2, 3), keepdim=True)
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = grey + (x - grey) * sat
    return standardize(x.clamp_(0, 255))
