"""TTA probabilities computed from a member's checkpoint (the only part of ensembling that needs torch)."""
from __future__ import annotations

from pathlib import Path

import torch

from bench import checkpoints
from bench.artifacts import RunArtifacts
from bench.data import open_dataset, reopen_args
from bench.data.images import load_images
from bench.ensembling.views import view_images
from bench.training.trainer import inference_net, predict


def restore_input_config(model, meta: dict) -> None:
    """Normalise as the checkpoint was trained: run.json's `input`, or ImageNet's mean/std for runs recorded before
    models normalised with their backbone's own constants (those were all trained with ImageNet's)."""
    from zoo.multihead import IMAGENET_MEAN, IMAGENET_STD
    cfg = meta.get("input") or {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    model.set_input_config(cfg["mean"], cfg["std"])


def load_trained(meta: dict, ckpt: Path) -> torch.nn.Module:
    """The model a run trained (its run.json `meta`), with the weights of checkpoint `ckpt` (a run's `.pt`, or a
    `.safetensors` file from bench.export) and the input normalisation it was trained with, on the CPU in eval
    mode. Nothing in the file can run code (bench/checkpoints.py)."""
    from zoo import create_model
    cfg, recipe = meta["config"], meta["config"]["recipe"]
    model, _ = create_model(cfg["model"], tuple(meta["num_classes"]), recipe["dropout"], recipe["hidden"], "none")
    model.load_state_dict(checkpoints.load_weights(ckpt))  # verified, and read without running code
    restore_input_config(model, meta)
    return model.eval()


def load_for_inference(meta: dict, ckpt: Path) -> torch.nn.Module:
    """load_trained in its inference form (trainer.inference_net: BatchNorm folded, channels_last; equal to it within
    float rounding): what every pass that only predicts runs, as the trainer's own evaluation does (bench.predict,
    the TTA views computed here, the distillation teacher)."""
    return inference_net(load_trained(meta, ckpt))


class ViewError(ValueError):
    """A view cannot be computed: no checkpoint, or the dataset moved or changed."""


@torch.no_grad()
def compute_views(member: RunArtifacts, missing: dict[str, list[str]], data_root: Path | None, device) -> dict:
    """TTA probabilities for the views each split lacks, each split from the weights that produced its stored
    probabilities (RunArtifacts.checkpoint; each checkpoint is loaded once)."""
    device = torch.device(device)
    meta = member.meta
    for split in missing:
        if not member.checkpoint(split).exists():
            raise ViewError(f"{member.label}: probabilities for views {missing[split]} of {split} are missing and "
                            f"there is no checkpoint {member.checkpoint(split)} to recompute them")
    cfg, recipe = meta["config"], meta["config"]["recipe"]
    root = Path(data_root or meta["data_root"])
    ds = open_dataset(root, check_images=False, **reopen_args(meta.get("data_layout")))
    if ds.fingerprint() != cfg["dataset"]:
        raise ViewError(f"{member.label}: dataset at {root} differs from the one it was trained on; pass --data")
    models, out = {}, {}
    for split, views in missing.items():
        ckpt = member.checkpoint(split)
        if ckpt not in models:
            models[ckpt] = load_for_inference(meta, ckpt).to(device)
        images = load_images(ds.files(split), cfg["size"], recipe["resize"], progress=False)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).to(device)
        out[split] = {}
        for name in views:  # the trainer's predict: same autocast, and halves its batch on out-of-memory
            out[split][name] = predict(models[ckpt], x, 128, view=lambda xb: view_images(xb, name)).cpu().numpy()
    return out
