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

Replayable: `augment` is `draw_params` (every random draw, from the generator, into an AugParams) followed by
`apply_params` (the pixels, from the images and those parameters alone). The trainer calls `augment`; the
distillation's `views` mode (bench/distilling/views.py) stores the parameters of fixed views and applies them again,
so the teacher labels exactly the pixels the student later trains on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

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


@dataclass
class AugParams:
    """One batch's augmentation, drawn: everything `apply_params` needs to make the views again, bit for bit.
    `geometry` is "none" (no warp: the image or its mirror, pixel for pixel), "warp" (one affine grid_sample: crop
    box and rotation) or "antialias" (crops on whole pixels, antialiased resize); `sx, sy, tx, ty` the crop box
    (crop_boxes), `angle` radians (warp only), `mirror` (B,) bool, `jitter` (B, 3) brightness, contrast and
    saturation factors (None: no jitter); `size` the output side."""
    geometry: str
    size: int
    mirror: torch.Tensor
    sx: torch.Tensor | None = None
    sy: torch.Tensor | None = None
    tx: torch.Tensor | None = None
    ty: torch.Tensor | None = None
    angle: torch.Tensor | None = None
    jitter: torch.Tensor | None = None

    TENSORS = ("mirror", "sx", "sy", "tx", "ty", "angle", "jitter")

    def rows(self, idx) -> "AugParams":
        """The parameters of rows `idx` (a tensor or array of positions), in that order."""
        idx = torch.as_tensor(idx, device=self.mirror.device)
        return replace(self, **{k: getattr(self, k)[idx] for k in self.TENSORS if getattr(self, k) is not None})

    def to(self, device) -> "AugParams":
        return replace(self, **{k: getattr(self, k).to(device) for k in self.TENSORS if getattr(self, k) is not None})


def draw_params(b: int, h: int, g: torch.Generator, device, crop_scale: float = 0.35, hflip: bool = True,
                rotate: float = 10.0, jitter: float = 0.2, out_size: int | None = None, crop_ratio: float = 4 / 3,
                crop_sampling: str = "area", antialias: bool = False) -> AugParams:
    """Draw the augmentation of a batch of `b` images of side `h` from generator `g`: the random draws `augment`
    makes, in its order (crop box, rotation, flip, jitter), so `apply_params(x, draw_params(...))` is `augment`."""
    size = out_size or h
    if antialias and rotate:
        raise ValueError("antialiased crops cannot rotate (rotate must be 0)")
    p = {}
    if antialias and (crop_scale < 1.0 or size != h):
        geometry = "antialias"
        p["sx"], p["sy"], p["tx"], p["ty"] = crop_boxes(b, min(crop_scale, 1.0), g, device, crop_ratio, crop_sampling)
    elif crop_scale < 1.0 or rotate or size != h:
        geometry = "warp"
        p["sx"], p["sy"], p["tx"], p["ty"] = crop_boxes(b, min(crop_scale, 1.0), g, device, crop_ratio, crop_sampling)
        p["angle"] = _uniform(b, -rotate, rotate, g, device) * (math.pi / 180)
    else:
        geometry = "none"
    mirror = torch.zeros(b, dtype=torch.bool, device=device)
    if hflip:
        mirror = torch.rand(b, generator=g, device=device) < 0.5
    if jitter:
        p["jitter"] = torch.stack([_uniform(b, 1 - jitter, 1 + jitter, g, device) for _ in range(3)], 1)
    return AugParams(geometry, size, mirror, **p)


def apply_params(x_uint8: torch.Tensor, p: AugParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(the augmented images, float pixels 0..255 channels_last, and which were mirrored) of uint8 images `x_uint8`
    (B, 3, H, W) with drawn parameters `p` (one row per image). Each image's view depends on its own row of `p`
    alone, so the same images and rows give the same pixels in any batch of the same shape."""
    b, _, h, w = x_uint8.shape
    x = x_uint8.float()
    size = p.size
    if p.geometry == "antialias":
        boxes = pixel_boxes(p.sx, p.sy, p.tx, p.ty, h, w).tolist()
        x = torch.cat([F.interpolate(x[i:i + 1, :, top:top + ch, left:left + cw], size=(size, size),
                                     mode="bilinear", align_corners=False, antialias=True)
                       for i, (top, left, ch, cw) in enumerate(boxes)])
    elif p.geometry == "warp":
        sx, sy, tx, ty = p.sx, p.sy, p.tx, p.ty
        cos, sin = torch.cos(p.angle), torch.sin(p.angle)
        theta = torch.stack([
            torch.stack([sx * cos, -sy * sin, tx], 1),
            torch.stack([sx * sin, sy * cos, ty], 1),
        ], 1)
        grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = torch.where(p.mirror.view(b, 1, 1, 1), x.flip(3), x)
    if p.jitter is not None:
        bright, contrast, sat = (p.jitter[:, k].view(b, 1, 1, 1) for k in range(3))
        x = x * bright
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = (x - grey.mean((2, 3), keepdim=True)) * contrast + grey.mean((2, 3), keepdim=True)
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = grey + (x - grey) * sat
    x = x.clamp_(0, 255).contiguous(memory_format=torch.channels_last)
    return x, p.mirror


def mix(x: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Mixup of two batches of augmented views: lam * x + (1 - lam) * partner, per image (lam: (B,))."""
    lam = lam.to(x.dtype).view(-1, 1, 1, 1)
    return (lam * x + (1 - lam) * partner).contiguous(memory_format=torch.channels_last)


def augment(x_uint8: torch.Tensor, g: torch.Generator, crop_scale: float = 0.35, hflip: bool = True,
            rotate: float = 10.0, jitter: float = 0.2, out_size: int | None = None,
            crop_ratio: float = 4 / 3, crop_sampling: str = "area", antialias: bool = False,
            return_mirror: bool = False):
    """Random resized crop (drawn by crop_boxes: area or side fraction per `crop_sampling`, aspect in [1/crop_ratio,
    crop_ratio]) resized to out_size, by one warp per batch or, with `antialias`, per image; rotation, flip, colour
    jitter: `draw_params` then `apply_params`. `return_mirror`: also return which images were mirrored, (B,) bool
    (the same draws either way)."""
    b, _, h, _ = x_uint8.shape
    p = draw_params(b, h, g, x_uint8.device, crop_scale, hflip, rotate, jitter, out_size, crop_ratio, crop_sampling,
                    antialias)
    x, mirror = apply_params(x_uint8, p)
    return (x, mirror) if return_mirror else x
