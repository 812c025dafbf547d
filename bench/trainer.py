"""The one trainer every backbone goes through.

Fast path (CUDA): the decoded dataset sits on the GPU as uint8, batches are gathered and augmented there
(bench/augment.py), the model runs in bf16 autocast and channels_last. The same code runs on the CPU in fp32.
Nothing is lost on interrupt: after every epoch the full state (model, optimizer, scheduler, EMA, loss weights,
RNGs, history) is written atomically to `last.pt`, and the same call resumes from it. A CUDA out-of-memory error
halves the batch size and retries the epoch from that state; a non-finite loss stops with its epoch and step.
"""
from __future__ import annotations

import contextlib
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import timm.optim
import timm.scheduler
import timm.utils
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bench.augment import augment, normalize
from bench.losses import MultiAttributeLoss
from bench.metrics import score
from zoo import Recipe, count_params

SELECT_MODES = {"overall_acc": "max", "mean_class_acc": "max", "val_loss": "min"}


class NonFiniteLoss(RuntimeError):
    pass


class ConfigMismatch(RuntimeError):
    pass


@dataclass
class Split:
    """One split's decoded images (N, 3, S, S) uint8 and labels (N, 6), resident on the training device."""
    x: torch.Tensor
    y: torch.Tensor | None

    @classmethod
    def from_numpy(cls, images: np.ndarray, labels: np.ndarray | None, device) -> "Split":
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
        y = torch.from_numpy(labels).to(device) if labels is not None else None
        return cls(x, y)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores)"


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def gflops(model: torch.nn.Module, size: int, device: torch.device) -> float:
    """Forward GFLOPs for one image (torch's FLOP counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size, device=device))
    model.train(was_training)
    return round(counter.get_total_flops() / 1e9, 3)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int, flip: bool = False) -> torch.Tensor:
    """Concatenated per-attribute softmax probabilities (N, sum(classes)), float32."""
    model.eval()
    device = x.device
    out = []
    for i in range(0, len(x), batch_size):
        xb = normalize(x[i:i + batch_size])
        if flip:
            xb = xb.flip(3)
        with autocast(device):
            logits = model(xb)
        out.append(torch.cat([z.float().softmax(-1) for z in logits], 1))
    return torch.cat(out) if out else torch.empty(0)


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    """Trains one MultiHeadNet on resident splits; `fit()` resumes from `run_dir/last.pt` when present."""

    def __init__(self, model: torch.nn.Module, recipe: Recipe, train: Split, val: Split, run_dir: Path,
                 class_counts: list, seed: int = 0, size: int = 224, progress: bool = True,
                 on_epoch: Callable[[int, dict], None] | None = None):
        self.device = train.x.device
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # batch shapes are constant (ragged tail dropped): autotune once
        self.model = model.to(self.device).to(memory_format=torch.channels_last)
        self.recipe, self.train, self.val, self.size = recipe, train, val, size
        self.run_dir, self.seed, self.progress, self.on_epoch = Path(run_dir), seed, progress, on_epoch
        self.num_classes = model.num_classes
        self.batch_size = recipe.batch_size
        self.criterion = MultiAttributeLoss(class_counts, recipe.loss, recipe.loss_beta, recipe.focal_gamma,
                                            recipe.label_smoothing, recipe.task_weighting).to(self.device)
        opt = {"sgd": "momentum", "adamw": "adamw"}[recipe.optimizer]
        self.optimizer = timm.optim.create_optimizer_v2(
            self.model, opt=opt, lr=recipe.lr, weight_decay=recipe.weight_decay,
            **({"momentum": recipe.momentum} if opt == "momentum" else {}))
        if self.criterion.log_vars is not None:
            self.optimizer.add_param_group({"params": [self.criterion.log_vars], "weight_decay": 0.0})
        self.scheduler, _ = timm.scheduler.create_scheduler_v2(
            self.optimizer, sched=recipe.schedule, num_epochs=recipe.epochs, warmup_epochs=recipe.warmup_epochs,
            warmup_lr=recipe.lr * 0.01, min_lr=recipe.lr * 1e-3, patience_epochs=recipe.plateau_patience,
            decay_rate=recipe.plateau_factor, plateau_mode=SELECT_MODES[recipe.select])
        self.ema = timm.utils.ModelEmaV3(self.model, decay=recipe.ema_decay) if recipe.ema else None
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(seed)
        self.history: list[dict] = []
        self.best: float | None = None
        self.best_epoch = 0
        self.epoch = 0

    # --- state -----------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "epoch": self.epoch, "batch_size": self.batch_size, "history": self.history, "best": self.best,
            "best_epoch": self.best_epoch,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "criterion": self.criterion.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "gen": self.gen.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None},
        }

    def load_state(self, st: dict) -> None:
        self.epoch, self.batch_size, self.history = st["epoch"], st["batch_size"], st["history"]
        self.best, self.best_epoch = st["best"], st["best_epoch"]
        self.model.load_state_dict(st["model"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.criterion.load_state_dict(st["criterion"])
        if self.ema and st["ema"] is not None:
            self.ema.load_state_dict(st["ema"])
        torch.set_rng_state(st["rng"]["torch"])
        np.random.set_state(st["rng"]["numpy"])
        random.setstate(st["rng"]["python"])
        self.gen.set_state(st["rng"]["gen"])
        if st["rng"]["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(st["rng"]["cuda"])

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    def save_last(self) -> None:
        _atomic_save(self.state(), self.last_path)

    def restore_last(self) -> bool:
        if not self.last_path.exists():
            return False
        self.load_state(torch.load(self.last_path, map_location=self.device, weights_only=False))
        return True

    # --- one epoch -------------------------------------------------------------------------------------------
    def _batches(self):
        n = len(self.train.x)
        perm = torch.randperm(n, generator=self.gen, device=self.device)
        bs = min(self.batch_size, n)
        for i in range(0, n - bs + 1, bs):  # drop the ragged tail: BatchNorm dislikes tiny batches
            yield perm[i:i + bs]

    def train_epoch(self, max_steps: int | None = None) -> dict:
        """One pass over the training split; returns mean loss and throughput."""
        r = self.recipe
        self.model.train()
        losses, seen = [], 0
        steps = (len(self.train.x) // min(self.batch_size, len(self.train.x)))
        if max_steps:
            steps = min(steps, max_steps)
        bar = tqdm(total=steps * min(self.batch_size, len(self.train.x)), unit="img", unit_scale=True, leave=False,
                   desc=f"epoch {self.epoch + 1}/{r.epochs}", disable=not self.progress)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        for step, idx in enumerate(self._batches()):
            if step == steps:
                break
            x = augment(self.train.x[idx], self.gen, r.crop_scale, r.hflip, r.rotate, r.jitter)
            with autocast(self.device):
                logits = self.model(x)
            loss = self.criterion(logits, self.train.y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.ema:
                self.ema.update(self.model)
            losses.append(loss.detach())
            seen += len(idx)
            bar.update(len(idx))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        bar.close()
        stacked = torch.stack(losses) if losses else torch.zeros(1)
        finite = torch.isfinite(stacked)
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0])
            raise NonFiniteLoss(f"loss became {stacked[bad].item()} at epoch {self.epoch + 1}, step {bad + 1} "
                                f"(lr {self.optimizer.param_groups[0]['lr']:.3g}); lower the learning rate or "
                                f"check the data. Last good state: {self.last_path}")
        return {"train_loss": float(stacked.mean()), "train_s": seconds, "img_per_s": seen / max(seconds, 1e-9)}

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema else self.model

    def validate(self) -> dict:
        probs = predict(self.eval_model, self.val.x, self.batch_size * 2)
        y = self.val.y
        parts = torch.split(probs, list(self.num_classes), dim=1)
        val_loss = sum(F.nll_loss(torch.log(p.clamp_min(1e-8)), y[:, i]) for i, p in enumerate(parts))
        pred = torch.stack([p.argmax(1) for p in parts], 1)
        s = score(y.cpu().numpy(), pred.cpu().numpy(), self.num_classes)
        return {"val_loss": float(val_loss), "overall_acc": s["overall_acc"], "mean_class_acc": s["mean_class_acc"]}

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if SELECT_MODES[self.recipe.select] == "max" else value < self.best

    def run_epoch(self) -> dict:
        t0 = time.perf_counter()
        tr = self.train_epoch()
        va = self.validate()
        metric = va[self.recipe.select]
        row = {"epoch": self.epoch + 1, "lr": self.optimizer.param_groups[0]["lr"], **tr, **va,
               "batch_size": self.batch_size, "epoch_s": time.perf_counter() - t0}
        self.scheduler.step(self.epoch + 1, metric)
        if self._improved(metric):
            self.best, self.best_epoch = metric, self.epoch + 1
            _atomic_save({"model": self.eval_model.state_dict(), "epoch": self.epoch + 1, "metric": metric},
                         self.run_dir / "best.pt")
        row["best"] = self.best
        self.history.append(row)
        self.epoch += 1
        return row

    # --- the loop ---------------------------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.restore_last():
            print(f"  resuming {self.run_dir} after epoch {self.epoch}/{self.recipe.epochs}")
        else:
            seed_everything(self.seed)
            self.save_last()  # epoch-0 state: what an out-of-memory retry of the first epoch restarts from
        while self.epoch < self.recipe.epochs and not self.should_stop():
            try:
                row = self.run_epoch()
            except torch.cuda.OutOfMemoryError:
                if self.batch_size <= 1:
                    raise
                self._recover_oom()
                continue
            self.save_last()
            pd.DataFrame(self.history).to_csv(self.run_dir / "history.csv", index=False)
            print(f"  epoch {row['epoch']:3d}/{self.recipe.epochs}  loss {row['train_loss']:.3f}  "  # also in logs
                  f"val loss {row['val_loss']:.3f}  acc {row['overall_acc']:.4f}  "
                  f"mean-class {row['mean_class_acc']:.4f}  {row['img_per_s']:.0f} img/s")
            if self.on_epoch:
                self.on_epoch(self.epoch, row)
        return self.history

    def _recover_oom(self) -> None:
        old = self.batch_size
        self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        self.restore_last()
        self.batch_size = max(1, old // 2)
        print(f"  CUDA out of memory at batch size {old}: retrying epoch {self.epoch + 1} with {self.batch_size}")

    def should_stop(self) -> bool:
        patience = self.recipe.early_stop
        return bool(patience) and self.epoch - self.best_epoch >= patience

    def info(self) -> dict:
        return {"params": count_params(self.model), "gflops": gflops(self.model, self.size, self.device)}
