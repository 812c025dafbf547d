"""Test-time-augmentation views, computed from a member's checkpoint (the only part of ensembling that needs torch).

A view is transforms joined by `+`, each a registered name optionally followed by its number: `plain`, `flip`,
`crop0.9`, `crop0.9+flip`. A transform receives the batch as model input (float pixels in [0, 1], N x 3 x S x S;
the model normalises) and its number (None when not given) and returns the transformed batch, same shape.
`bench.ensemble --tta` takes a comma-separated list of views; training stores `plain` and `flip`.
"""
from __future__ import annotations

from pathlib import Path

import re

import torch
import torch.nn.functional as F

from bench.artifacts import RunArtifacts
from bench.training.augment import to_input
from bench.data import open_dataset
from bench.data.images import load_images
from bench.registry import Registry
from bench.training.trainer import predict


def restore_input_config(model, meta: dict) -> None:
    """Normalise as the checkpoint was trained: run.json's `input`, or ImageNet's mean/std for runs recorded before
    models normalised with their backbone's own constants (those were all trained with ImageNet's)."""
    from zoo.multihead import IMAGENET_MEAN, IMAGENET_STD
    cfg = meta.get("input") or {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    model.set_input_config(cfg["mean"], cfg["std"])


class ViewError(ValueError):
    """A view cannot be computed: no checkpoint, or the dataset moved or changed."""


VIEWS = Registry("TTA transform")


@VIEWS.register
def plain(x: torch.Tensor, arg: float | None = None) -> torch.Tensor:
    """the image as trained on"""
    return x


@VIEWS.register
def flip(x: torch.Tensor, arg: float | None = None) -> torch.Tensor:
    """left-right mirror"""
    return x.flip(3)


@VIEWS.register
def crop(x: torch.Tensor, arg: float | None = None) -> torch.Tensor:
    """cropF: centre crop of fraction F of the side (default 0.9), resized back"""
    frac = 0.9 if arg is None else arg
    if not 0 < frac <= 1:
        raise ValueError(f"crop fraction {frac} must be in (0, 1]")
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


def view_images(x: torch.Tensor, view: str) -> torch.Tensor:
    """Model input (float pixels, the model normalises) of a uint8 batch under a TTA view."""
    xb = to_input(x)
    for name, arg in parse_view(view):
        xb = VIEWS[name](xb, arg)
    return xb


@torch.no_grad()
def compute_views(member: RunArtifacts, missing: dict[str, list[str]], data_root: Path | None, device) -> dict:
    """TTA probabilities from the member's best.pt for the views each split lacks (the model is built once)."""
    from zoo import create_model
    device = torch.device(device)
    meta, ckpt = member.meta, member.dir / "best.pt"
    if not ckpt.exists():
        raise ViewError(f"{member.label}: probabilities for views {missing} are missing and there is no "
                            f"checkpoint {ckpt} to recompute them")
    cfg, recipe = meta["config"], meta["config"]["recipe"]
    root = Path(data_root or meta["data_root"])
    ds = open_dataset(root, check_images=False)
    if ds.fingerprint() != cfg["dataset"]:
        raise ViewError(f"{member.label}: dataset at {root} differs from the one it was trained on; pass --data")
    model, _ = create_model(cfg["model"], tuple(meta["num_classes"]), recipe["dropout"], recipe["hidden"], "none")
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["model"])
    restore_input_config(model, meta)
    model.to(device).eval()
    out = {}
    for split, views in missing.items():
        images = load_images(ds.files(split), cfg["size"], recipe["resize"], progress=False)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).to(device)
        out[split] = {}
        for name in views:  # the trainer's predict: same autocast, and halves its batch on out-of-memory
            out[split][name] = predict(model, x, 128, view=lambda xb: view_images(xb, name)).cpu().numpy()
    return out
