"""Training recipes: one plain data object each, every field with the reason for its value.

`default` is the suite's fair recipe, used for every backbone unless a zoo entry or --recipe says otherwise.
`fashionnet` and `effb3-300` reproduce the two public recipes (both were ImageNet-pretrained):
  fashionnet  ResNet-50, 512-unit hidden layer + BatchNorm + dropout 0.5, inverse-frequency class weights,
              SGD 1e-4 momentum 0.9 wd 1e-4, ReduceLROnPlateau(patience 5, factor 0.1), batch 32, 50 epochs,
              random resized crop / flip / rotation / colour jitter: 71.9% val.
  effb3-300   EfficientNet-B3, resize 320 bicubic + centre crop 300, h-flip, 6 linear heads, dropout 0.2,
              SGD 0.1 cosine, momentum 0.9, wd 1e-5, 50 epochs, best-val-loss checkpoint: 81.5% val.
              Approximated here by a 300 px centre-cropped decode (policy `crop`) and flip-only augmentation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


# Allowed values of the recipe's choice fields (the trainer and loss module implement exactly these).
CHOICES = {
    "resize": ("letterbox", "stretch", "crop"),
    "optimizer": ("sgd", "adamw"),
    "schedule": ("cosine", "plateau"),
    "loss": ("none", "inverse", "sqrt_inverse", "effective", "focal"),
    "task_weighting": ("uniform", "uncertainty"),
    "select": ("overall_acc", "mean_class_acc", "val_loss"),
}


@dataclass(frozen=True)
class Recipe:
    size: int | None = None         # input side; None: the zoo entry's default (224 for ResNets, 300 for EfficientNets)
    resize: str = "letterbox"       # keep garment proportions (fit/length live there); see bench/images.py
    epochs: int = 30                # 4-5k images converge in ~30 epochs with cosine decay
    batch_size: int = 64            # big enough to keep a GPU busy, small enough for BatchNorm noise to help
    optimizer: str = "adamw"        # adamw: robust across backbones without per-model lr search; or sgd
    lr: float = 1e-3                # adamw lr for batch 64 (scaled linearly when batch size changes)
    momentum: float = 0.9           # sgd only
    weight_decay: float = 0.05      # adamw's decoupled decay; small data wants strong regularisation
    schedule: str = "cosine"        # cosine with warmup, or plateau (ReduceLROnPlateau on the selection metric)
    warmup_epochs: int = 2          # avoid early divergence of freshly initialised heads
    plateau_patience: int = 5       # plateau schedule only
    plateau_factor: float = 0.1     # plateau schedule only
    label_smoothing: float = 0.1    # labels of clothing attributes are noisy; smoothing calibrates ensembles too
    loss: str = "none"              # class weighting: none | inverse | sqrt_inverse | effective | focal
    loss_beta: float = 0.999        # effective-number scheme (Cui et al. 2019)
    focal_gamma: float = 2.0        # focal scheme
    task_weighting: str = "uniform"  # uniform | uncertainty (Kendall et al. 2018, learned per attribute)
    dropout: float = 0.2            # before each head
    hidden: int = 0                 # 0: linear heads; >0: shared Linear+BatchNorm+ReLU of this width first
    ema: bool = False               # weight EMA; helps long runs, needs enough steps per epoch
    ema_decay: float = 0.998        # per step
    crop_scale: float = 0.35        # random resized crop keeps 35-100% of the area
    hflip: bool = True              # garments are left-right symmetric in every attribute
    rotate: float = 10.0            # degrees; photos are upright but not perfectly
    jitter: float = 0.2             # brightness/contrast/saturation strength; fabric needs colour, so keep it mild
    select: str = "overall_acc"     # checkpoint selection: overall_acc | mean_class_acc | val_loss
    early_stop: int = 0             # epochs without improvement before stopping; 0 = never
    pretrained: str = "auto"        # auto (ImageNet if available) | none | PATH

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"recipe {name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr < 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"recipe needs epochs >= 1, batch_size >= 1, lr >= 0 and 0 <= dropout < 1: {self}")

    def updated(self, **overrides) -> "Recipe":
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown recipe field(s) {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)


RECIPES: dict[str, Recipe] = {
    "default": Recipe(),
    "fashionnet": Recipe(
        size=224, epochs=50, batch_size=32, optimizer="sgd", lr=1e-4, momentum=0.9, weight_decay=1e-4,
        schedule="plateau", warmup_epochs=0, plateau_patience=5, plateau_factor=0.1, label_smoothing=0.0,
        loss="inverse", dropout=0.5, hidden=512, crop_scale=0.5, rotate=15.0, jitter=0.3),
    "effb3-300": Recipe(
        size=300, resize="crop", epochs=50, batch_size=32, optimizer="sgd", lr=0.1, momentum=0.9,
        weight_decay=1e-5, schedule="cosine", warmup_epochs=0, label_smoothing=0.0, dropout=0.2, hidden=0,
        crop_scale=1.0, rotate=0.0, jitter=0.0, select="val_loss"),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; available: {', '.join(RECIPES)}")
    return RECIPES[name]
