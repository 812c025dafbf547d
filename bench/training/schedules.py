"""Learning-rate schedules of the recipes: timm's for the fixed ones (cosine with warm-up), ours for `plateau`.

timm deprecated its PlateauLRScheduler (1.0.2x: "will be removed in a future timm release"; it warns on every
construction), because a metric-driven schedule is not a function of the epoch and timm does not save its counters.
The fashionnet recipe needs one (the public recipe reduces the lr when the val score plateaus), and the trainer
saves its counters itself (Trainer._plateau_state). So `PlateauSchedule` is that scheduler's behaviour, kept here:
the same linear warm-up from `warmup_lr` (times each group's `lr_scale`, as timm's schedulers set every value), then
torch's ReduceLROnPlateau on the metric after each epoch; the same `state_dict` (`best`, `last_epoch`), so a state
saved with timm's class resumes with this one. tests/test_trainer.py checks it against timm's class step by step
while timm still has it.
"""
from __future__ import annotations

import timm.scheduler
import torch


class PlateauSchedule:
    """Warm-up for `warmup_epochs`, then the lr times `decay_rate` after `patience` epochs without improvement of the
    metric (`mode` max or min), down to `min_lr`. The interface the trainer uses: step(epoch, metric),
    step_update(n) (a no-op: plateau steps per epoch), state_dict/load_state_dict, and `lr_scheduler` (torch's)."""

    def __init__(self, optimizer: torch.optim.Optimizer, decay_rate: float, patience: int, warmup_epochs: int,
                 warmup_lr: float, min_lr: float, mode: str):
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_values = [group["initial_lr"] for group in optimizer.param_groups]
        self._set(self.base_values)
        self.lr_scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, patience=patience, factor=decay_rate, threshold=1e-4, cooldown=0, mode=mode, min_lr=min_lr)
        self.warmup_t, self.warmup_lr_init = warmup_epochs, warmup_lr
        self.warmup_steps = [1.0] * len(self.base_values)
        if warmup_epochs:
            self.warmup_steps = [(v - warmup_lr) / warmup_epochs for v in self.base_values]
            self._set([warmup_lr] * len(self.base_values))

    def _set(self, values: list[float]) -> None:
        """Each group's lr: the value times its `lr_scale` (timm's Scheduler.update_groups)."""
        for group, value in zip(self.optimizer.param_groups, values):
            group["lr"] = value * group["lr_scale"] if "lr_scale" in group else value

    def step(self, epoch: int, metric: float | None = None) -> None:
        if epoch <= self.warmup_t:
            self._set([self.warmup_lr_init + epoch * s for s in self.warmup_steps])
        elif metric is not None:
            self.lr_scheduler.step(metric)

    def step_update(self, num_updates: int, metric: float | None = None) -> None:
        return None

    def state_dict(self) -> dict:
        return {"best": self.lr_scheduler.best, "last_epoch": self.lr_scheduler.last_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.lr_scheduler.best = state["best"]
        if "last_epoch" in state:
            self.lr_scheduler.last_epoch = state["last_epoch"]


def create_schedule(optimizer, recipe, updates_per_epoch: int, mode: str):
    """The recipe's schedule on `optimizer`: `plateau` (on the selection metric, `mode` max or min) or timm's."""
    min_lr, warmup_lr = recipe.lr * recipe.lr_floor, recipe.lr * 0.01
    if recipe.schedule == "plateau":
        if recipe.lr_per_step:
            raise ValueError("the plateau schedule steps per epoch (on the val metric): lr_per_step must be off")
        return PlateauSchedule(optimizer, recipe.plateau_factor, recipe.plateau_patience, recipe.warmup_epochs,
                               warmup_lr, min_lr, mode)
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer, sched=recipe.schedule, num_epochs=recipe.epochs, warmup_epochs=recipe.warmup_epochs,
        warmup_lr=warmup_lr, min_lr=min_lr, patience_epochs=recipe.plateau_patience, decay_rate=recipe.plateau_factor,
        plateau_mode=mode, step_on_epochs=not recipe.lr_per_step, updates_per_epoch=updates_per_epoch)
    return scheduler
