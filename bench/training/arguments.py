"""Command-line arguments that set recipe fields, shared by the commands that train (bench.distill; bench.run has
the same flags): --epochs, --size, --batch-size, --lr, --weight-decay, --dropout, --label-smoothing, --loss,
--ema, --pretrained and --set FIELD=VALUE, and turning them into recipe overrides; the run controls (--data-mode,
--compile, --checkpoint-every, --precision, --seed). Parsing only: no torch."""
from __future__ import annotations

import argparse

from bench.training.precision import PRECISION_HELP, PRECISIONS
from bench.training.schemes import LOSSES
from zoo.recipes import parse_setting

# Recipe fields settable from the command line (zoo/recipes.py says what each does); bench.run's RECIPE_FLAGS.
RECIPE_FLAGS = {"epochs": int, "size": int, "batch_size": int, "lr": float, "weight_decay": float, "dropout": float,
                "label_smoothing": float, "loss": str}


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pretrained", help="auto | none | PATH to a weights file (default: the recipe's, auto)")
    for name, kind in RECIPE_FLAGS.items():
        if name == "loss":  # choices and their meaning from the loss-scheme registry
            p.add_argument("--loss", choices=LOSSES.names(), help="override the recipe's class-imbalance treatment: "
                           + LOSSES.describe())
            continue
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"override the recipe's {name}")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None, help="weight EMA on/off")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any recipe field (python -m bench.run --list shows them; reasons in "
                        "zoo/recipes.py), e.g. --set lr_floor=0; repeatable; checked like the recipe itself")


def recipe_overrides(a: argparse.Namespace) -> dict:
    """{recipe field: value} of the flags given (None for those not given); ValueError when --set repeats a field
    that a flag (or another --set) gives."""
    overrides = {k: getattr(a, k) for k in (*RECIPE_FLAGS, "ema", "pretrained")}
    given = {k: f"--{k.replace('_', '-')}" for k, v in overrides.items() if v is not None}
    for text in a.set:
        field, value = parse_setting(text)
        if field in given:
            raise ValueError(f"--set {text} and {given[field]}: the recipe field {field} is given twice")
        overrides[field], given[field] = value, f"--set {text}"
    return overrides


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    """--precision, shared by the commands that run networks (bench.run, bench.distill, bench.tune, bench.predict);
    bench/training/precision.py decides what each value means on each device."""
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)


def add_run_control_arguments(p: argparse.ArgumentParser) -> None:
    """--data-mode, --compile, --checkpoint-every, --precision and --seed, shared by bench.run and bench.distill."""
    p.add_argument("--data-mode", default="auto", choices=["auto", "resident", "stream"],
                   help="resident: each decoded split one tensor on the device; stream: batches read from the "
                        "memory-mapped decode cache (datasets larger than memory); auto (default): resident when it "
                        "fits comfortably in the available memory, printed with the bytes (not part of the config)")
    p.add_argument("--compile", default="off", choices=["auto", "on", "off"],
                   help="torch.compile the training step: on, off, or auto (on for CUDA) (default off)")
    p.add_argument("--checkpoint-every", type=float, metavar="SECONDS",
                   help="save the resumable state at the first epoch boundary after this many seconds (0: every "
                        "epoch; default: 50x the cost of one save, i.e. < 2%% of training time)")
    add_precision_argument(p)
    p.add_argument("--seed", type=int, default=0)
