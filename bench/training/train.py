"""Training library: one model, trained (or resumed, or skipped when finished) with its artifacts written.

Used by `python -m bench.run` (bench/run.py, the thin command line) and the tuner; nothing here parses arguments.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.artifacts import atomic_write, claim, read_run, save_probs, write_run
from bench.data import FashionDataset, attributes_of, class_counts
from bench.data.images import load_images
from bench.metrics import probs_to_pred, score
from bench.plots import plot_curves
from bench.training.distributed import SINGLE, Dist
from bench.training.trainer import (DATA_MODES, ConfigMismatch, NonFiniteLoss, Split, Trainer, device_name,
                                    seed_everything)
from zoo import RECIPES, Recipe, create_model, get_entry, get_recipe
from zoo.pretrained import expects_weights
from zoo.recipes import recipe_name_for
from bench.metrics import TARGETS

# On the built-in demo data (no --data) the README command must finish in ~3 CPU minutes.
DEMO_QUICK = {"size": 64, "epochs": 8, "batch_size": 32, "pretrained": "none"}


METRIC_SELECTIONS = ("overall_acc", "class_avg_acc", "mean_class_acc")  # select values that pick an epoch by a score


def resolve_recipe(model: str, recipe_name: str | None, overrides: dict,
                   metric: str | None = None) -> tuple[Recipe, int]:
    """The recipe and input size for a model; `default` becomes finetune or scratch by the init it will get.
    `metric` (bench.metrics.TARGETS) makes a recipe that selects its epoch by a score select by that metric; a
    recipe that keeps its last epoch (or selects by val loss) keeps doing so, and an explicit `select` override
    wins."""
    entry = get_entry(model)
    name = recipe_name or entry.recipe
    pretrained = overrides.get("pretrained") or RECIPES[recipe_name_for(name, False)].pretrained
    recipe = get_recipe(name, name == "default" and expects_weights(entry.timm_name, pretrained))
    recipe = recipe.updated(**overrides)
    if metric and recipe.select in METRIC_SELECTIONS and not overrides.get("select"):
        recipe = recipe.updated(select=TARGETS[metric])
    return recipe, entry.size if recipe.size is None else recipe.size


class ImageStore:
    """Decoded splits per (size, policy), loaded once per process and shared by every model and every tuning trial
    that needs them. Data mode `resident` (the default) keeps each split as one tensor on the training device (and
    its array in host memory); `stream` keeps only the memory-mapped cache files and reads each batch from them
    (datasets larger than memory; `choose_data_mode`). In data-parallel training (`dist`) a process decodes and
    keeps only its shard of each split (distributed.py), never the whole split, not even on the host."""

    def __init__(self, ds: FashionDataset, device: torch.device, progress: bool = True, dist: Dist = SINGLE,
                 mode: str = "resident", mode_reason: str = ""):
        if mode not in DATA_MODES:
            raise ValueError(f"data mode {mode!r}: one of {', '.join(DATA_MODES)}")
        self.ds, self.device, self.dist = ds, torch.device(device), dist
        self.mode, self.mode_reason = mode, mode_reason
        self.progress = progress and dist.main
        self._arrays, self._splits = {}, {}

    def rows(self, name: str) -> np.ndarray:
        """Positions of this process's rows in split `name` (all of them in a single process)."""
        return self.dist.shard(len(self.ds.splits[name].paths))

    def array(self, name: str, size: int, policy: str) -> np.ndarray:
        """Split `name` decoded at `size` x `size` by `policy` (uint8 NHWC), decoded once and kept (`stream`: the
        memory-mapped cache file)."""
        key = (name, size, policy)
        if key not in self._arrays:
            files = self.ds.files(name)
            self._arrays[key] = load_images([files[i] for i in self.rows(name)], size, policy, progress=self.progress,
                                            mmap=self.mode == "stream")
        return self._arrays[key]

    def arrays(self, size: int, policy: str) -> dict[str, np.ndarray]:
        return {s: self.array(s, size, policy) for s in ("train", "val", "test")}

    def split(self, name: str, size: int, policy: str) -> Split:
        key = (name, size, policy)
        if key not in self._splits:
            rows, labels = self.rows(name), self.ds.splits[name].labels
            self._splits[key] = Split.from_numpy(self.array(name, size, policy),
                                                 labels[rows] if labels is not None else None, self.device,
                                                 index=rows if self.dist.enabled else None,
                                                 total=len(self.ds.splits[name].paths), mode=self.mode)
        return self._splits[key]

    def describe(self) -> dict:
        """The data mode and why, for run.json."""
        return {"mode": self.mode, "reason": self.mode_reason}


# Host memory a resident split costs per decoded byte: on the CPU the numpy array, the channels-first tensor and
# allocator slack, measured 2.32-2.50x (reports/reference/scaling.md); on CUDA the host keeps the array and briefly a
# channels-first copy (2x), and the GPU holds the tensor (1x).
HOST_FACTOR = {"cpu": 2.4, "cuda": 2.0}
FIT_SHARE = 0.8  # resident only when it needs at most this share of the available memory (the rest: model, others)
GPU_SHARE = 0.5  # on CUDA the data may take at most half the free GPU memory (the model's working set needs the rest)


def decoded_bytes(ds: FashionDataset, plans: list[tuple[Recipe, int]], dist: Dist = SINGLE) -> int:
    """Bytes of every decoded split this process holds for these (recipe, size) plans: each distinct (split, side,
    resize policy) once, as ImageStore keeps them."""
    keys = set()
    for recipe, size in plans:
        keys |= {("train", train_side(size, recipe), recipe.resize), ("val", size, recipe.resize),
                 ("test", size, recipe.resize)}
    return sum(len(dist.shard(len(ds.splits[s].paths))) * side * side * 3 for s, side, _ in keys)


def mem_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none: not Linux)."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def choose_data_mode(requested: str, needed: int, device: torch.device) -> tuple[str, str]:
    """(mode, reason): `auto` is `resident` when the decoded splits (`needed` bytes) fit comfortably in the available
    host memory (x HOST_FACTOR) and, on CUDA, in the free GPU memory; otherwise `stream`."""
    gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
    device = torch.device(device)
    factor = HOST_FACTOR["cuda" if device.type == "cuda" else "cpu"]
    host, avail = needed * factor, mem_available()
    facts = f"decoded splits {gib(needed)}; resident needs ~{gib(host)} of host memory ({factor}x)"
    facts += f", {gib(avail)} available (MemAvailable)" if avail is not None else ", available memory unknown"
    fits = avail is None or host <= FIT_SHARE * avail
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        facts += f"; {gib(needed)} of GPU memory, {gib(free)} free"
        fits = fits and needed <= GPU_SHARE * free
    if requested != "auto":
        return requested, f"--data-mode {requested} (given); {facts}"
    if fits:
        return "resident", f"auto: fits ({facts}; resident up to {FIT_SHARE:.0%} of it)"
    return "stream", f"auto: does not fit comfortably ({facts}; resident up to {FIT_SHARE:.0%} of it)"


def train_side(size: int, recipe: Recipe) -> int:
    """Side at which training images are decoded: the input size x the recipe's train_margin (crops are resized
    down to `size`); val and test are decoded at `size`."""
    return round(size * recipe.train_margin)


def demo_settings(data_arg: str | None, overrides: dict, root: Path) -> dict:
    """On the built-in demo data (no --data, no $FASHION_DATA) use quick CPU settings the flags did not set."""
    if data_arg or os.environ.get("FASHION_DATA"):
        return overrides
    quick = {k: v for k, v in DEMO_QUICK.items() if overrides.get(k) is None}
    print(f"[demo] built-in demo data at {root}; quick CPU settings {quick} (override with flags)")
    return {**overrides, **quick}


ARTIFACTS = ("last.pt", "best.pt", "run.json", "history.csv", "curves.png", "probs_val.npz", "probs_test.npz",
             "probs_test_valrun.npz")


def train_model(name: str, ds: FashionDataset, store: ImageStore, recipe: Recipe, size: int, model_dir: Path,
                seed: int = 0, progress: bool = True, on_epoch=None, force: bool = False,
                extra_meta: dict | None = None, persist: bool = True, compile: str = "off",
                checkpoint_every: float | None = None, extra_config: dict | None = None,
                make_trainer=None) -> dict:
    """Train (or resume, or skip if finished) one model; write its artifacts; return its run.json contents.

    `extra_config` is merged into the run's config (a later call with another one stops with "different config");
    `make_trainer` (default Trainer) builds the trainer with Trainer's arguments, e.g. a distillation trainer
    (bench/distilling/): it is called only when there is training to do, inside the claim.

    persist=False (tune trials): no resumable state and no weight files are written, only run.json, history.csv
    and the probabilities. The folder is claimed while this runs (bench/artifacts.py `claim`): a second process or
    host on the same folder stops with ClaimError naming the holder. Data parallel (store.dist): every rank calls
    this; rank 0 alone claims and writes, and its ClaimError is raised on every rank."""
    with contextlib.ExitStack() as stack:
        def take_claim() -> None:
            stack.enter_context(claim(model_dir))

        store.dist.on_main(take_claim)
        return _train_model(name, ds, store, recipe, size, Path(model_dir), seed, progress, on_epoch, force,
                            extra_meta, persist, compile, checkpoint_every, extra_config, make_trainer)


def _train_model(name, ds, store, recipe, size, model_dir, seed, progress, on_epoch, force, extra_meta, persist,
                 compile, checkpoint_every, extra_config=None, make_trainer=None) -> dict:
    entry = get_entry(name)
    config = {"model": name, "timm_name": entry.timm_name, "size": size, "seed": seed,
              "dataset": ds.fingerprint(), "recipe": recipe.to_dict(), **(extra_config or {})}
    meta_path = model_dir / "run.json"
    dist = store.dist
    old = dist.on_main(lambda: _prepare_folder(name, model_dir, config, force))  # rank 0 reads; all ranks agree
    if old is not None:
        return old
    device = store.device
    labels = {s: ds.splits[s].labels for s in ("train", "val", "test")}
    train = store.split("train", train_side(size, recipe), recipe.resize)
    val = store.split("val", size, recipe.resize)
    seed_everything(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, init = create_model(name, ds.num_classes, recipe.dropout, recipe.hidden, recipe.pretrained)
    for w in caught:
        print(f"[{name}] WARNING: {w.message}")
    trainer = (make_trainer or Trainer)(model, recipe, train, val, model_dir,
                                        class_counts(labels["train"], ds.num_classes), seed=seed, size=size,
                                        progress=progress, on_epoch=on_epoch, persist=persist, compile=compile,
                                        checkpoint_every=checkpoint_every, dist=dist)
    meta = {"name": name, "config": config, "status": "training", "init": init, **trainer.info(),
            "input": model.input_config, "compiled": trainer.compiled,
            "device": device_name(device) + (f" x {dist.world} (DDP, {dist.backend})" if dist.enabled else ""),
            "torch": torch.__version__, "data_root": str(ds.root),
            "data_layout": ds.layout, "num_classes": list(ds.num_classes), "attributes": list(ds.attributes),
            "class_names": [list(c) for c in ds.class_names],
            "train_class_counts": [c.tolist() for c in class_counts(labels["train"], ds.num_classes)],
            "data_mode": store.describe(), **trainer.numerics.record(),  # precision, layout (not in the config)
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), **(extra_meta or {})}
    if dist.enabled:
        meta["distributed"] = {"world_size": dist.world, "backend": dist.backend,
                               "batch_per_process": trainer.local_batch}
    if dist.main:
        write_run(meta, model_dir)
    print(f"[{name}] {entry.timm_name} @{size}px, init {init['init']}, {meta['params'] / 1e6:.1f} M params, "
          f"{meta['gflops']:.2f} GFLOPs, recipe {recipe.optimizer} lr {recipe.lr} x {recipe.epochs} epochs "
          f"on {meta['device']}{' (compiled)' if trainer.compiled else ''}")
    try:
        history = trainer.fit()
    except NonFiniteLoss as e:
        if dist.main:
            write_run({**meta, "status": "failed", "error": str(e)}, model_dir)
        raise
    return finalize(meta, trainer, {s: store.split(s, size, recipe.resize) for s in ("val", "test")}, labels,
                    history, model_dir)


def with_new_fields(config: dict) -> dict:
    """A run config recorded by an older version, with the recipe fields added since then at their defaults. Each
    new Recipe field's default reproduces the behaviour from before it (zoo/recipes.py), so that run is this run:
    re-running its command resumes or skips it instead of stopping with "different config"."""
    recipe = config.get("recipe")
    if not isinstance(recipe, dict):
        return config
    return {**config, "recipe": {**Recipe().to_dict(), **recipe}}


def _prepare_folder(name: str, model_dir: Path, config: dict, force: bool) -> dict | None:
    """The finished run's run.json when there is nothing to do; ConfigMismatch when the folder holds another run;
    else None, with the folder ready (emptied of old artifacts under `force`)."""
    meta_path = model_dir / "run.json"
    if meta_path.exists() and not force:
        old = read_run(model_dir).meta
        before = with_new_fields(old.get("config", {}))
        if before != config:
            diff = sorted(k for k in set(config) | set(before) if config.get(k) != before.get(k))
            raise ConfigMismatch(f"{model_dir} holds a run with a different config (differs in: {', '.join(diff)}); "
                                 f"use another --run name, or --force to start it over")
        if old.get("status") == "done":
            print(f"[{name}] already finished in {model_dir} (--force retrains)")
            return old
    if force:  # cached TTA views came from the old weights: they go too
        for f in (*ARTIFACTS, *(p.name for p in model_dir.glob("tta_*.npz"))):
            (model_dir / f).unlink(missing_ok=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    return None


def finalize(meta: dict, trainer: Trainer, splits: dict[str, Split], labels: dict, history: list[dict],
             model_dir: Path) -> dict:
    """Best weights -> val/test probabilities (plain and h-flip), scores, curves, run.json. Data parallel: every
    rank predicts its shard, the rows are gathered in the split's order, and rank 0 writes."""
    best = trainer.best_state()
    trainer.eval_model.load_state_dict(best["model"])
    main = trainer.dist.main
    probs = {}
    for split in ("val", "test"):
        plain = trainer.predict_split(splits[split]).cpu().numpy()
        flip = trainer.predict_split(splits[split], flip=True).cpu().numpy()
        extra = {"labels": labels[split]} if labels[split] is not None else {}
        if main:
            save_probs(model_dir / f"probs_{split}.npz", plain=plain, flip=flip, **extra)
        probs[split] = (plain, flip)
    nc = tuple(meta["num_classes"])
    plain, flip = probs["val"]
    hist = pd.DataFrame(history)
    if main:
        atomic_write(model_dir / "history.csv", lambda tmp: hist.to_csv(tmp, index=False))
        atomic_write(model_dir / "curves.png", lambda tmp: plot_curves(hist, tmp, meta["name"]))
    meta.update({
        "status": "done", "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "epochs_run": len(history), "best_epoch": int(best["epoch"]), "batch_size_final": trainer.batch_size,
        "micro_batch_final": trainer.micro_batch,
        "train_time_s": round(float(hist["epoch_s"].sum()), 2),
        "img_per_s": round(float(hist["img_per_s"].median()), 1),
        "val": score(labels["val"], probs_to_pred(plain, nc), nc, attributes_of(meta)),
        "val_tta": score(labels["val"], probs_to_pred((plain + flip) / 2, nc), nc, attributes_of(meta)),
    })
    if main:
        write_run(meta, model_dir)
    v, t = meta["val"], meta["val_tta"]
    print(f"[{meta['name']}] done: val overall {v['overall_acc']:.4f} (flip-TTA {t['overall_acc']:.4f}), "
          f"class-average {v['class_avg_acc']:.4f}, balanced {v['mean_class_acc']:.4f}, best epoch {meta['best_epoch']}, "
          f"{meta['train_time_s']:.0f} s, {meta['img_per_s']:.0f} img/s -> {model_dir}")
    return meta
