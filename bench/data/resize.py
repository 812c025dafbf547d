"""Resize policies: how a photo becomes a square model input. One decorated function per policy.

A policy receives the decoded RGB photo (PIL, already roughly downscaled by the JPEG draft mode) and the side, and
returns a (size, size, 3) uint8 array. The recipe field `resize` names one; the decode cache keys on the name, so a
policy's output must depend only on the photo and the side.

Clothing photos are ~300 px tall and ~214 px wide: stretching them to a square widens every garment by ~40%, which
blurs exactly what `fit` (tight/loose) and `length` are about, so the fine-tuning recipes letterbox; the scratch
recipe stretches (measured better for it, reports/reference/recipes.md).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from bench.registry import Registry

RESIZE = Registry("resize policy")
PAD_RGB = (124, 116, 104)  # ImageNet mean: normalises to ~0


def _scaled(im: Image.Image, size: int, fit) -> Image.Image:
    w, h = im.size
    scale = fit(size / w, size / h)
    return im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR, reducing_gap=3.0)


@RESIZE.register
def letterbox(im: Image.Image, size: int) -> np.ndarray:
    """fit the longer side, keep the aspect ratio, pad with the ImageNet mean colour"""
    im = _scaled(im, size, min)
    canvas = Image.new("RGB", (size, size), PAD_RGB)
    canvas.paste(im, ((size - im.size[0]) // 2, (size - im.size[1]) // 2))
    return np.asarray(canvas)


@RESIZE.register
def stretch(im: Image.Image, size: int) -> np.ndarray:
    """fill the square, distorting the aspect ratio"""
    return np.asarray(im.resize((size, size), Image.BILINEAR, reducing_gap=3.0))


@RESIZE.register
def crop(im: Image.Image, size: int) -> np.ndarray:
    """fill the square keeping the aspect ratio, centre crop"""
    im = _scaled(im, size, max)
    left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))
