"""The zoo: short names -> timm models with their default input size and recipe.

Everything else (trainer, tuner, ensembler, reports) asks this registry; adding a backbone is one `register` line.
Any other timm model name works too, with timm's default input size and the default recipe.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import timm
import timm.data
import torch

from zoo.multihead import MultiHeadNet
from zoo.pretrained import build_backbone


@dataclass(frozen=True)
class ZooEntry:
    name: str
    timm_name: str
    size: int
    recipe: str = "default"
    note: str = ""


ZOO: dict[str, ZooEntry] = {}


class UnknownModel(LookupError):
    pass


def register(name: str, timm_name: str, size: int, recipe: str = "default", note: str = "") -> ZooEntry:
    ZOO[name] = ZooEntry(name, timm_name, size, recipe, note)
    return ZOO[name]


register("resnet18", "resnet18.tv_in1k", 224, note="smallest, fastest baseline")
register("resnet50", "resnet50.tv_in1k", 224, note="fashionnet recipe's backbone")
register("vgg16", "vgg16.tv_in1k", 224, note="classic; heavy for its accuracy")
register("effb3", "efficientnet_b3.ra2_in1k", 300, note="effb3-300 recipe's backbone")
register("effv2s", "tf_efficientnetv2_s.in1k", 300, note="EfficientNetV2-S")


def get_entry(name: str) -> ZooEntry:
    if name in ZOO:
        return ZOO[name]
    base = name.split(".")[0]
    if timm.is_model(base):
        cfg = timm.models.get_pretrained_cfg(name) or timm.models.get_pretrained_cfg(base)
        size = cfg.input_size[-1] if cfg else 224
        return ZooEntry(name, name, size, note="timm model")
    close = difflib.get_close_matches(name, list(dict.fromkeys([*ZOO, *timm.list_models()])), n=5, cutoff=0.6)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise UnknownModel(f"unknown model {name!r}: not in the zoo ({', '.join(ZOO)}) nor in timm{hint}")


def create_model(name: str, num_classes: tuple[int, ...], dropout: float = 0.2, hidden: int = 0,
                 pretrained: str = "auto", fast_padding: bool = True) -> tuple[MultiHeadNet, dict]:
    """The zoo model `name` as a MultiHeadNet and its init record. `fast_padding`: timm's TensorFlow-SAME
    convolutions (`tf_*` models) pad without copying their input (zoo/fastpaths.py: the same numbers, parameters and
    state_dict keys); False keeps timm's own Conv2dSame."""
    entry = get_entry(name)
    backbone, init = build_backbone(entry.timm_name, pretrained)
    if fast_padding:
        from zoo.fastpaths import fast_same_padding
        fast_same_padding(backbone)
    width = getattr(backbone, "head_hidden_size", None) or backbone.num_features  # vgg: 4096-wide pre-logits
    cfg = timm.data.resolve_data_config({}, model=backbone)  # the backbone's own input normalisation
    model = MultiHeadNet(backbone, width, num_classes, dropout, hidden, cfg["mean"], cfg["std"])
    init = {**init, "mean": model.input_config["mean"], "std": model.input_config["std"]}
    return model, init


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def zoo_table() -> list[dict]:
    """The zoo with parameter counts (built on the meta device: no memory, no weights)."""
    rows = []
    for e in ZOO.values():
        with torch.device("meta"):
            m = timm.create_model(e.timm_name, num_classes=0)
        rows.append({"name": e.name, "timm": e.timm_name, "params_M": round(count_params(m) / 1e6, 1),
                     "size": e.size, "recipe": e.recipe, "note": e.note})
    return rows
