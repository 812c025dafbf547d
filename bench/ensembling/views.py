"""Test-time-augmentation views: registered transforms, composed by name (torch loads only when one is applied).

A view is transforms joined by `+`, each a registered name optionally followed by its number: `plain`, `flip`,
`crop0.9`, `crop0.9+flip`. A transform receives the batch as model input (float pixels 0..255, N x 3 x S x S;
the model normalises) and its number (None when not given) and returns the transformed batch, same shape.
`bench.ensemble --tta` takes a comma-separated list of views; training stores `plain` and `flip`; tta.py computes
the others from a member's checkpoint.
"""
from __future__ import annotations

import re

from bench.registry import Registry


VIEWS = Registry("TTA transform")


@VIEWS.register
def plain(x, arg: float | None = None):
    """the image as trained on"""
    return x


@VIEWS.register
def flip(x, arg: float | None = None):
    """left-right mirror"""
    return x.flip(3)


@VIEWS.register
def crop(x, arg: float | None = None):
    """cropF: centre crop of fraction F of the side (default 0.9), resized back"""
    frac = 0.9 if arg is None else arg
    if not 0 < frac <= 1:
        raise ValueError(f"crop fraction {frac} must be in (0, 1]")
    import torch.nn.functional as F
    s = x.shape[-1]
    c = max(1, round(s * frac))
    o = (s - c) // 2
    return F.interpolate(x[..., o:o + c, o:o + c], size=(s, s), mode="bilinear", align_corners=False)


def parse_view(view: str) -> list[tuple[str, float | None]]:
    """'crop0.9+flip' -> [('crop', 0.9), ('flip', None)]; ValueError naming the registered transforms."""
    steps = []
    for part in view.split("+"):
        m = re.fullmatch(r"([a-z_]+)(\d*\.?\d*)", part.strip())
        if not m:
            raise ValueError(f"TTA view {view!r}: {part!r} is not NAME or NAMEnumber (transforms: "
                             f"{', '.join(VIEWS)})")
        name, num = m.groups()
        VIEWS[name]  # unknown names fail here, listing the registered ones
        steps.append((name, float(num) if num else None))
    return steps


def view_images(x, view: str):
    """Model input (float pixels, the model normalises) of a uint8 batch under a TTA view."""
    from bench.training.augment import to_input
    xb = to_input(x)
    for name, arg in parse_view(view):
        xb = VIEWS[name](xb, arg)
    return xb
