"""Search spaces for bench.tune: one small define-by-run function each (`bench.tune --space NAME`).

A space receives the Optuna trial and the base recipe (the one the study tunes, after the command's flags) and
returns recipe overrides; it asks the trial for values with `trial.suggest_*`. Register a new one with
`@SPACES.register`; `bench.tune --help` lists them. Choice fields read their registries (a loss scheme added to
bench/training/schemes.py is searched at once). Study storage lives in storage.py beside this module; study data in
the working folder (WORKDIR/studies/), never in the package. (Before 2026-11-27 this was the top-level `studies`
package, whose name the working folder's `studies/` shadowed under `python -m`.)
"""
from __future__ import annotations

from bench.registry import Registry
from zoo.recipes import choices

SPACES = Registry("search space")


@SPACES.register
def default(trial, base) -> dict:
    """lr (base/10 .. base x 10), weight decay, dropout, label smoothing, loss scheme (+ parameter), task weighting"""
    params = {
        "lr": trial.suggest_float("lr", base.lr / 10, base.lr * 10, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-1, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.6),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
        "loss": trial.suggest_categorical("loss", list(choices("loss"))),
        "task_weighting": trial.suggest_categorical("task_weighting", list(choices("task_weighting"))),
    }
    if params["loss"] == "effective":
        params["loss_beta"] = trial.suggest_categorical("loss_beta", [0.9, 0.99, 0.999, 0.9999])
    if params["loss"] == "focal":
        params["focal_gamma"] = trial.suggest_float("focal_gamma", 0.5, 4.0)
    if params["loss"] == "logit_adjusted":
        params["logit_tau"] = trial.suggest_float("logit_tau", 0.25, 2.0)
    return params


@SPACES.register
def lr_only(trial, base) -> dict:
    """learning rate alone (base/10 .. base x 10): the cheapest useful study"""
    return {"lr": trial.suggest_float("lr", base.lr / 10, base.lr * 10, log=True)}


@SPACES.register
def finetune(trial, base) -> dict:
    """fine-tuning knobs: lr (base/3 .. base x 3), backbone lr scale (0.05 .. 1), weight decay, augmentation strength"""
    return {
        "lr": trial.suggest_float("lr", base.lr / 3, base.lr * 3, log=True),
        "backbone_lr_scale": trial.suggest_float("backbone_lr_scale", 0.05, 1.0, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-3, 0.2, log=True),
        "crop_scale": trial.suggest_float("crop_scale", 0.2, 0.8),
        "rotate": trial.suggest_categorical("rotate", [0.0, 10.0]),
        "jitter": trial.suggest_categorical("jitter", [0.0, 0.2]),
    }
