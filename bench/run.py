"""Train zoo models the same fair way and leave their artifacts under runs/<run>/<model>/.

    python -m bench.run --models resnet18,effb3                 # built-in demo data unless --data / $FASHION_DATA
    python -m bench.run --models resnet50 --recipe fashionnet --data ROOT
    python -m bench.run --list

Re-running the same command resumes an interrupted model from its last completed epoch and skips finished ones.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.artifacts import read_run, save_probs, write_json
from bench.data import DatasetError, FashionDataset, class_counts, open_dataset, resolve_root
from bench.images import load_images
from bench.metrics import probs_to_pred, score
from bench.plots import plot_curves
from bench.trainer import (ConfigMismatch, NonFiniteLoss, Split, Trainer, device_name, pick_device, predict,
                           seed_everything)
from zoo import Recipe, UnknownModel, create_model, get_entry, get_recipe, zoo_table

# Recipe fields settable from the command line (zoo/recipes.py says what each does).
RECIPE_FLAGS = {"epochs": int, "size": int, "batch_size": int, "lr": float, "weight_decay": float, "dropout": float,
                "label_smoothing": float, "loss": str}
# On the built-in demo data (no --data) the README command must finish in ~3 CPU minutes.
DEMO_QUICK = {"size": 64, "epochs": 8, "batch_size": 32, "pretrained": "none"}


def resolve_recipe(model: str, recipe_name: str | None, overrides: dict) -> tuple[Recipe, int]:
    entry = get_entry(model)
    recipe = get_recipe(recipe_name or entry.recipe).updated(**overrides)
    return recipe, recipe.size or entry.size


class ImageStore:
    """Decoded splits per (size, policy), loaded once per process and kept resident on the training device, so
    every model and every tuning trial that needs them shares one copy."""

    def __init__(self, ds: FashionDataset, device: torch.device, progress: bool = True):
        self.ds, self.device, self.progress = ds, torch.device(device), progress
        self._arrays, self._splits = {}, {}

    def arrays(self, size: int, policy: str) -> dict[str, np.ndarray]:
        key = (size, policy)
        if key not in self._arrays:
            self._arrays[key] = {s: load_images(self.ds.files(s), size, policy, progress=self.progress)
                                 for s in ("train", "val", "test")}
        return self._arrays[key]

    def split(self, name: str, size: int, policy: str) -> Split:
        key = (name, size, policy)
        if key not in self._splits:
            self._splits[key] = Split.from_numpy(self.arrays(size, policy)[name], self.ds.splits[name].labels,
                                                 self.device)
        return self._splits[key]


def demo_settings(data_arg: str | None, overrides: dict, root: Path) -> dict:
    """On the built-in demo data (no --data, no $FASHION_DATA) use quick CPU settings the flags did not set."""
    if data_arg or os.environ.get("FASHION_DATA"):
        return overrides
    quick = {k: v for k, v in DEMO_QUICK.items() if overrides.get(k) is None}
    print(f"[demo] built-in demo data at {root}; quick CPU settings {quick} (override with flags)")
    return {**overrides, **quick}


def train_model(name: str, ds: FashionDataset, store: ImageStore, recipe: Recipe, size: int, model_dir: Path,
                seed: int = 0, progress: bool = True, on_epoch=None, force: bool = False,
                extra_meta: dict | None = None) -> dict:
    """Train (or resume, or skip if finished) one model; write its artifacts; return its run.json contents."""
    model_dir = Path(model_dir)
    entry = get_entry(name)
    config = {"model": name, "timm_name": entry.timm_name, "size": size, "seed": seed,
              "dataset": ds.fingerprint(), "recipe": recipe.to_dict()}
    meta_path = model_dir / "run.json"
    if meta_path.exists() and not force:
        old = read_run(model_dir).meta
        if old.get("config") != config:
            diff = sorted(k for k in set(config) | set(old.get("config", {}))
                          if config.get(k) != old.get("config", {}).get(k))
            raise ConfigMismatch(f"{model_dir} holds a run with a different config (differs in: {', '.join(diff)}); "
                                 f"use another --run name, or --force to start it over")
        if old.get("status") == "done":
            print(f"[{name}] already finished in {model_dir} (--force retrains)")
            return old
    if force:
        for f in ("last.pt", "best.pt", "run.json", "history.csv"):
            (model_dir / f).unlink(missing_ok=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    device = store.device
    labels = {s: ds.splits[s].labels for s in ("train", "val", "test")}
    train, val = store.split("train", size, recipe.resize), store.split("val", size, recipe.resize)
    seed_everything(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, init = create_model(name, ds.num_classes, recipe.dropout, recipe.hidden, recipe.pretrained)
    for w in caught:
        print(f"[{name}] WARNING: {w.message}")
    trainer = Trainer(model, recipe, train, val, model_dir, class_counts(labels["train"], ds.num_classes),
                      seed=seed, size=size, progress=progress, on_epoch=on_epoch)
    meta = {"name": name, "config": config, "status": "training", "init": init, **trainer.info(),
            "device": device_name(device), "torch": torch.__version__, "data_root": str(ds.root),
            "num_classes": list(ds.num_classes), "class_names": [list(c) for c in ds.class_names],
            "train_class_counts": [c.tolist() for c in class_counts(labels["train"], ds.num_classes)],
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), **(extra_meta or {})}
    write_json(meta, meta_path)
    print(f"[{name}] {entry.timm_name} @{size}px, init {init['init']}, {meta['params'] / 1e6:.1f} M params, "
          f"{meta['gflops']:.2f} GFLOPs, recipe {recipe.optimizer} lr {recipe.lr} x {recipe.epochs} epochs "
          f"on {meta['device']}")
    try:
        history = trainer.fit()
    except NonFiniteLoss as e:
        write_json({**meta, "status": "failed", "error": str(e)}, meta_path)
        raise
    return finalize(meta, trainer, {s: store.split(s, size, recipe.resize).x for s in ("val", "test")}, labels,
                    history, model_dir)


def finalize(meta: dict, trainer: Trainer, images: dict, labels: dict, history: list[dict], model_dir: Path) -> dict:
    """Best weights -> val/test probabilities (plain and h-flip), scores, curves, run.json."""
    best = torch.load(model_dir / "best.pt", map_location=trainer.device, weights_only=False)
    model = trainer.eval_model
    model.load_state_dict(best["model"])
    probs = {}
    for split in ("val", "test"):
        x = images[split]
        plain = predict(model, x, trainer.batch_size * 2).cpu().numpy()
        flip = predict(model, x, trainer.batch_size * 2, flip=True).cpu().numpy()
        extra = {"labels": labels[split]} if labels[split] is not None else {}
        save_probs(model_dir / f"probs_{split}.npz", plain=plain, flip=flip, **extra)
        probs[split] = (plain, flip)
    nc = tuple(meta["num_classes"])
    plain, flip = probs["val"]
    hist = pd.DataFrame(history)
    hist.to_csv(model_dir / "history.csv", index=False)
    plot_curves(hist, model_dir / "curves.png", meta["name"])
    meta.update({
        "status": "done", "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "epochs_run": len(history), "best_epoch": int(best["epoch"]), "batch_size_final": trainer.batch_size,
        "train_time_s": round(float(hist["epoch_s"].sum()), 2),
        "img_per_s": round(float(hist["img_per_s"].median()), 1),
        "val": score(labels["val"], probs_to_pred(plain, nc), nc),
        "val_tta": score(labels["val"], probs_to_pred((plain + flip) / 2, nc), nc),
    })
    write_json(meta, model_dir / "run.json")
    v, t = meta["val"], meta["val_tta"]
    print(f"[{meta['name']}] done: val overall {v['overall_acc']:.4f} (flip-TTA {t['overall_acc']:.4f}), "
          f"mean per-class {v['mean_class_acc']:.4f}, best epoch {meta['best_epoch']}, "
          f"{meta['train_time_s']:.0f} s, {meta['img_per_s']:.0f} img/s -> {model_dir}")
    return meta


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,effb3", help="comma-separated zoo names or timm model names")
    p.add_argument("--list", action="store_true", help="print the zoo and exit")
    p.add_argument("--data", help="FashionDataset root (default $FASHION_DATA, else the built-in demo set)")
    p.add_argument("--recipe", help="recipe preset: default, fashionnet, effb3-300 (default: each model's own)")
    p.add_argument("--run", help="run name: artifacts go to OUT/RUN/MODEL (default: the recipe name)")
    p.add_argument("--out", default="runs", help="runs folder (default runs/)")
    p.add_argument("--pretrained", help="auto | none | PATH to a weights file (default: the recipe's, auto)")
    p.add_argument("--from-study", help="train with the best parameters of this Optuna study (bench.tune)")
    p.add_argument("--storage", help="study storage URL for --from-study (default: studies/fashion.db)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="retrain models that already have artifacts")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-report", action="store_true", help="skip rebuilding reports/leaderboard.md")
    for field, kind in RECIPE_FLAGS.items():
        p.add_argument(f"--{field.replace('_', '-')}", type=kind, help=f"override the recipe's {field}")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None, help="weight EMA on/off")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    a = parse_args(argv)
    if a.list:
        print(pd.DataFrame(zoo_table()).to_string(index=False))
        print("\nAny timm model name also works (timm.list_models()). Recipes: default, fashionnet, effb3-300.")
        return []
    overrides = {k: getattr(a, k) for k in (*RECIPE_FLAGS, "ema", "pretrained")}
    try:
        root = resolve_root(a.data)
        ds = open_dataset(root)
        overrides = demo_settings(a.data, overrides, root)
        if a.from_study:
            from studies import best_params
            overrides.update({k: v for k, v in best_params(a.from_study, a.storage).items()
                              if overrides.get(k) is None})
        names = [m.strip() for m in a.models.split(",") if m.strip()]
        plans = [(n, *resolve_recipe(n, a.recipe, overrides)) for n in names]
    except (DatasetError, UnknownModel, KeyError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    device = pick_device(a.device)
    run = a.run or a.recipe or "default"
    store = ImageStore(ds, device, progress=not a.no_progress)
    results = []
    for name, recipe, size in plans:
        model_dir = Path(a.out) / run / name
        try:
            results.append(train_model(name, ds, store, recipe, size, model_dir, a.seed,
                                       progress=not a.no_progress, force=a.force))
        except KeyboardInterrupt:
            print(f"\ninterrupted: {name}'s last completed epoch is saved in {model_dir / 'last.pt'}; "
                  f"run the same command again to resume", file=sys.stderr)
            raise SystemExit(130)
        except (ConfigMismatch, NonFiniteLoss, DatasetError) as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1)
    if not a.no_report:
        from bench.report import build_report
        build_report(a.out)
    return results


if __name__ == "__main__":
    main()
