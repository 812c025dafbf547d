"""Backbone weights: `auto` (ImageNet if the local cache or the hub has them), `none`, or a local file.

Offline, `auto` falls back to random init in well under 2 seconds (a cache look-up and one HTTP HEAD with a
1-second timeout, no retry loops) and says so; what was used is returned so runs record it.
"""
from __future__ import annotations

import os
import time
import urllib.request
import warnings
from pathlib import Path

import timm
import torch
from torch import nn


class PretrainedUnavailable(UserWarning):
    pass


def _cached_weights(timm_name: str) -> str | None:
    """Path of already-downloaded weights for a timm model (Hugging Face cache or torch hub cache)."""
    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache
        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(hit, str):
                return hit
    if cfg.url:
        hit = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if hit.exists():
            return str(hit)
    return None


def weights_reachable(timm_name: str, timeout: float = 1.0) -> bool:
    """One HTTP HEAD to where timm would download from; no retries. (A TCP probe is not enough: proxies and
    sandboxes accept connections to any address and then hang the real download in retry loops.)"""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:
        return False
    if cfg.hf_hub_id:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        url = f"{endpoint}/api/models/{cfg.hf_hub_id.split('@')[0]}"
    elif cfg.url:
        url = cfg.url
    else:
        return False
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as r:
            return r.status < 400
    except Exception:  # DNS, TLS, timeout, HTTP error: all mean "not now"
        return False


def expects_weights(timm_name: str, pretrained: str) -> bool:
    """Will `build_backbone(timm_name, pretrained)` start from pretrained weights? (picks the init's recipe)"""
    if pretrained == "none":
        return False
    if pretrained != "auto":
        return True  # a weights file; a missing one fails loudly when the model is built
    return _cached_weights(timm_name) is not None or weights_reachable(timm_name)


def load_state_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--pretrained {path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "backbone"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def build_backbone(timm_name: str, pretrained: str = "auto", **kwargs) -> tuple[nn.Module, dict]:
    """timm backbone without classifier (num_classes=0) and a record of its initialisation."""
    t0 = time.perf_counter()
    make = lambda **kw: timm.create_model(timm_name, num_classes=0, **kwargs, **kw)  # noqa: E731
    if pretrained == "none":
        return make(pretrained=False), {"init": "scratch", "source": "none"}
    if pretrained != "auto":
        model = make(pretrained=False)
        state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in load_state_file(pretrained).items()}
        own = model.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not usable:
            raise ValueError(f"--pretrained {pretrained}: no tensor matches {timm_name}'s parameters")
        model.load_state_dict(usable, strict=False)
        return model, {"init": "file", "source": str(pretrained), "matched": len(usable), "of": len(own)}
    cached = _cached_weights(timm_name)
    if cached:
        model = make(pretrained=True, pretrained_cfg_overlay={"file": cached})
        return model, {"init": "imagenet", "source": cached}
    if weights_reachable(timm_name):
        try:
            return make(pretrained=True), {"init": "imagenet", "source": "hub"}
        except Exception as e:  # hub reachable but download failed: fall through to scratch
            reason = f"download failed ({type(e).__name__}: {e})"
    else:
        reason = "no cached weights and the hub is unreachable (offline)"
    msg = f"ImageNet weights for {timm_name} unavailable: {reason}; training from random init"
    warnings.warn(msg, PretrainedUnavailable, stacklevel=2)
    info = {"init": "scratch", "source": "auto-fallback", "warning": msg,
            "lookup_s": round(time.perf_counter() - t0, 3)}
    return make(pretrained=False), info
