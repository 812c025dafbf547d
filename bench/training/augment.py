"""Batched augmentation on uint8 image tensors already on the training device.

One affine warp per image does random-resized-crop and rotation in a single `grid_sample`; the horizontal flip is an
exact mirror (`flip`), colour jitter is three per-image scalars. A whole batch is augmented in a few kernel launches,
with no CPU workers. The output is float pixels in 0..255, channels_last: the model normalises them itself with its
backbone's own mean/std (zoo/multihead.py).

Crop geometry: the kept area fraction is uniform in [crop_scale, 1] (`crop_sampling = "area"`, torchvision's
RandomResizedCrop) or its square root, the side fraction, is uniform in [sqrt(crop_scale), 1] (`"side"`, the plain
loop of issue #15: "a square crop of 60-100% of the side"; smaller crops on average). The aspect ratio is log-uniform
in [1/crop_ratio, crop_ratio] (default [3/4, 4/3]; crop_ratio = 1: square crops) narrowed so that the crop always fits
inside the image (no clamping, so the area is exactly the one drawn). The crop is resized to out_size (default: the
input's side), so a batch decoded larger than the model's input (the recipe's train_margin) gives crops that are
downscales. With crop_scale = 1 and no rotation there is no warp at all: the output is the image or its mirror, pixel
for pixel.

Resampling: by default one bilinear `grid_sample` per batch (fast; it point-samples, so a crop that is shrunk is not
low-pass filtered first). `antialias=True` instead cuts each crop on whole pixels and resizes it with torch's
antialiased bilinear interpolation, one call per image (what torchvision's `resized_crop(antialias=True)` does, as
the plain loop); it cannot rotate, and reading the boxes is one host sync per batch on a GPU.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_input(x_uint8: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float pixels 0..255, channels_last (fastest layout for convolutions): the eval input."""
    return x_uint8.float().contiguous(memory_format=torch.channels_last)


def _uniform(n: int, lo, hi, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def crop_boxes(b: int, crop_scale: float, g: torch.Generator, device, crop_ratio: float = 4 / 3,
               sampling: str = "area") -> tuple[torch.Tensor, ...]:
    """Per image: crop width and height as fractions of the image's (sx, sy; sx * sy = the drawn area) and the
    centre offset (tx, ty) in [-1, 1] units, chosen so the crop stays inside the image. `sampling`: the area fraction
    is uniform in [crop_scale, 1] ("area") or the side fraction sqrt(area) uniform in [sqrt(crop_scale), 1] ("side")."""
    if sampling == "area":
        area = _uniform(b, crop_scale, 1.0, g, device)
    elif sampling == "side":
        area = _uniform(b, math.sqrt(crop_scale), 1.0, g, device) ** 2
    else:
        raise ValueError(f"crop sampling {sampling!r} is not one of area, side")
    lo = torch.clamp(torch.log(area), min=-math.log(crop_ratio))  # sx = sqrt(area * r) <= 1  <=>  r <= 1 / area
    hi = torch.clamp(-torch.log(area), max=math.log(crop_ratio))  # sy = sqrt(area / r) <= 1  <=>  r >= area
    r = torch.exp(lo + torch.rand(b, generator=g, device=device) * (hi - lo))
    sx, sy = torch.sqrt(area * r), torch.sqrt(area / r)
    tx = _uniform(b, -1.0, 1.0, g, device) * (1 - sx)
    ty = _uniform(b, -1.0, 1.0, g, device) * (1 - sy)
    return sx, sy, tx, ty


def pixel_boxes(sx, sy, tx, ty, h: int, w: int) -> torch.Tensor:
    """Crop fractions and centres (crop_boxes) -> (B, 4) whole-pixel boxes (top, left, height, width) inside an h x w
    image: the side rounded to the nearest pixel (at least 1), the corner rounded and kept inside."""
    cw = torch.clamp(torch.round(sx * w), 1, w)
    ch = torch.clamp(torch.round(sy * h), 1, h)
    left = torch.minimum(torch.clamp(torch.round((tx + 1) * w / 2 - cw / 2), min=0), w - cw)
    top = torch.minimum(torch.clamp(torch.round((ty + 1) * h / 2 - ch / 2), min=0), h - ch)
    return torch.stack([top, left, ch, cw], 1).long()


def augment(x_uint8: torch.Tensor, g: torch.Generator, crop_scale: float = 0.35, hflip: bool = True,
            rotate: float = 10.0, jitter: float = 0.2, out_size: int | None = None,
            crop_ratio: float = 4 / 3, crop_sampling: str = "area", antialias: bool = False,
            return_mirror: bool = False):
    """Random resized crop (drawn by crop_boxes: area or side fraction per `crop_sampling`, aspect in [1/crop_ratio,
    crop_ratio]) resized to out_size, by one warp per batch or, with `antialias`, per image; rotation, flip, colour
    jitter. `return_mirror`: also return which images were mirrored, (B,) bool (the same draws either way)."""
    b, _, h, w = x_uint8.shape
    dev = x_uint8.device
    x = x_uint8.float()
    size = out_size or h
    if antialias and rotate:
        raise ValueError("antialiased crops cannot rotate (rotate must be 0)")
    if antialias and (crop_scale < 1.0 or size != h):
        boxes = pixel_boxes(*crop_boxes(b, min(crop_scale, 1.0), g, dev, crop_ratio, crop_sampling), h, w).tolist()
        x = torch.cat([F.interpolate(x[i:i + 1, :, top:top + ch, left:left + cw], size=(size, size),
                                     mode="bilinear", align_corners=False, antialias=True)
                       for i, (top, left, ch, cw) in enumerate(boxes)])
    elif crop_scale < 1.0 or rotate or size != h:
        sx, sy, tx, ty = crop_boxes(b, min(crop_scale, 1.0), g, dev, crop_ratio, crop_sampling)
        angle = _uniform(b, -rotate, rotate, g, dev) * (math.pi / 180)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([
            torch.stack([sx * cos, -sy * sin, tx], 1),
            torch.stack([sx * sin, sy * cos, ty], 1),
        ], 1)
        grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mirror = torch.zeros(b, dtype=torch.bool, device=dev)
    if hflip:
        mirror = torch.rand(b, generator=g, device=dev) < 0.5
        x = torch.where(mirror.view(b, 1, 1, 1), x.flip(3), x)
    if jitter:
        bright = _uniform(b, 1 - jitter, 1 + jitter, g, dev).view(b, 1, 1, 1)
        contrast = _uniform(b, 1 - jitter, 1 + jitter, g, dev).view(b, 1, 1, 1)
        sat = _uniform(b, 1 - jitter, 1 + jitter, g, dev).view(b, 1, 1, 1)
        x = x * bright
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = (x - grey.mean((2, 3), keepdim=True)) * contrast + grey.mean((2, 3), keepdim=True)
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = grey + (x - grey) * sat
    x = x.clamp_(0, 255).contiguous(memory_format=torch.channels_last)
    return (x, mirror) if return_mirror else x
