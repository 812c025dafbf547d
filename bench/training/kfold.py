"""Use every labelled image: k-fold cross-fitting over train + val, and refitting on train + val.

K-fold (`bench.run --folds K`): the labelled pool is train + val (train rows first, then val rows, in split order).
It is split into K folds stratified over all attributes (bench/data/folds.py, seeded; the fold of every image is
recorded in folds.json). Fold model f trains on the other K-1 folds and predicts fold f and the test split; its
"val" split is fold f, which by default only shows on its curves: the recipes `scratch` and `finetune` keep their
last epoch, so no image's out-of-fold prediction comes from a model selected on it. A recipe that selects its epoch
on val then selects it on the fold it predicts, and the member records `oof_optimistic` (the report says so).
Layout: RUNS/<run>/<model>/fold-<f>/ is a normal run folder (claimed, resumable, skipped when finished); the member
folder RUNS/<run>/<model>/ holds run.json (kind model, `kfold`), probs_val.npz (out-of-fold probabilities over the
pool, each image exactly once, with the pool labels) and probs_test.npz (the mean over the K fold models). To every
later stage the K-fold model is one member, scored on n = pool size images.

Refit (`bench.run --refit`): after a normal run, train once more on train + val for the epochs the val run used
(its selected epoch; the recipe's epochs for select=last), last epoch kept; RUNS/<run>/<model>/refit/ holds it. Its
test probabilities replace the member's probs_test.npz (the val run's are kept as probs_test_valrun.npz); the val
statistics stay those of the val run, and run.json's `refit` says so. The member's train_time_s is both trainings'
(`refit` keeps each); a k-fold member's gflops is K x one model's, since its test prediction runs all K.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.artifacts import atomic_write, read_run, save_probs, write_json
from bench.data import FashionDataset, Split, class_counts
from bench.data.folds import stratified_folds
from bench.errors import ConfigMismatch
from bench.metrics import probs_to_pred, score
from bench.training.train import ImageStore, train_model
from bench.training.trainer import MappedImages, Split as TrainSplit
from zoo import Recipe



class SubsetStore(ImageStore):
    """Splits made of rows of a parent store's decoded splits: a fold never decodes an image again."""

    def __init__(self, parent: ImageStore, ds: FashionDataset, sources: dict[str, list[tuple[str, np.ndarray]]]):
        if parent.dist.enabled:
            raise ValueError("k-fold and refit runs are single-process: run them without torchrun (or use --devices "
                             "to train several models at once)")
        super().__init__(ds, parent.device, parent.progress, mode=parent.mode, mode_reason=parent.mode_reason)
        self.parent, self.sources = parent, sources

    def array(self, name: str, size: int, policy: str) -> np.ndarray:
        key = (name, size, policy)
        if key not in self._arrays:
            self._arrays[key] = np.concatenate([self.parent.array(src, size, policy)[rows]
                                                for src, rows in self.sources[name]])
        return self._arrays[key]

    def split(self, name: str, size: int, policy: str) -> TrainSplit:
        """Stream mode: rows read from the parent's memory-mapped files, never gathered into one array."""
        key = (name, size, policy)
        if self.mode == "stream" and key not in self._splits:
            labels = self.ds.splits[name].labels
            parts = [(self.parent.array(src, size, policy), rows) for src, rows in self.sources[name]]
            self._splits[key] = TrainSplit(MappedImages(parts, self.device), None if labels is None else
                                           torch.from_numpy(labels).to(self.device))
        return super().split(name, size, policy)


def pool(ds: FashionDataset) -> tuple[tuple[str, ...], np.ndarray]:
    """Paths and labels of the labelled pool, train + val."""
    tr, va = ds.splits["train"], ds.splits["val"]
    return tr.paths + va.paths, np.concatenate([tr.labels, va.labels])


def pool_sources(rows: np.ndarray, n_train: int) -> list[tuple[str, np.ndarray]]:
    """Pool rows as (parent split, rows of it), in pool order."""
    rows = np.sort(rows)
    return [("train", rows[rows < n_train]), ("val", rows[rows >= n_train] - n_train)]


def plan_folds(ds: FashionDataset, k: int, seed: int) -> dict:
    """Fold ids of the pool and a signature naming this exact partition (pool, labels, K, seed)."""
    if k < 2:
        raise ValueError(f"--folds {k}: k-fold needs at least 2 folds")
    paths, labels = pool(ds)
    if len(paths) < 2 * k:
        raise ValueError(f"--folds {k}: the pool (train + val) has only {len(paths)} images")
    fold = stratified_folds(labels, k, seed)
    sig = hashlib.sha256("\n".join(paths).encode() + labels.tobytes() + fold.tobytes()).hexdigest()[:12]
    return {"k": k, "seed": seed, "signature": f"oof-k{k}-{sig}", "n": len(paths), "fold": fold.tolist()}


def fold_dataset(ds: FashionDataset, train_rows: np.ndarray, val_rows: np.ndarray) -> FashionDataset:
    paths, labels = pool(ds)
    pick = lambda name, rows: Split(name, tuple(paths[i] for i in rows), labels[rows])  # noqa: E731
    return FashionDataset(ds.root, ds.class_names, {"train": pick("train", train_rows), "val": pick("val", val_rows),
                                                    "test": ds.splits["test"]}, ds.attributes, ds.layout)


def train_kfold(name: str, ds: FashionDataset, store: ImageStore, recipe: Recipe, size: int, member_dir: Path,
                k: int, seed: int = 0, fold_seed: int = 0, **train_kw) -> dict:
    """Train the K fold models of one member (finished folds are skipped) and write the member's out-of-fold and
    test probabilities; returns the member's run.json contents."""
    member_dir = Path(member_dir)
    plan = plan_folds(ds, k, fold_seed)
    if (member_dir / "run.json").exists() and "kfold" not in read_run(member_dir).meta:
        raise ConfigMismatch(f"{member_dir} holds a normal (train/val) run; use another --run name for the k-fold "
                             f"member")
    folds_file = member_dir / "folds.json"
    if folds_file.exists() and not train_kw.get("force") and \
            json.loads(folds_file.read_text())["signature"] != plan["signature"]:
        raise ConfigMismatch(f"{folds_file} records another partition (other data, K or --fold-seed); use another "
                             f"--run name, or --force to retrain every fold")
    member_dir.mkdir(parents=True, exist_ok=True)
    paths, labels = pool(ds)
    write_json({**plan, "pool": list(paths)}, folds_file)
    fold = np.asarray(plan["fold"])
    n_train = len(ds.splits["train"])
    optimistic = recipe.select != "last"  # any other selection picks an epoch on the fold it predicts
    if optimistic:
        print(f"[{name}] note: recipe selects its epoch by {recipe.select} on the fold it predicts: the out-of-fold "
              f"scores are optimistic (the scratch and finetune recipes keep their last epoch)")
    extra = train_kw.pop("extra_meta", None) or {}
    metas = []
    for f in range(k):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        fold_store = SubsetStore(store, fold_dataset(ds, tr, te),
                                 {"train": pool_sources(tr, n_train), "val": pool_sources(te, n_train),
                                  "test": [("test", np.arange(len(ds.splits["test"])))]})
        print(f"[{name}] fold {f + 1}/{k}: train on {len(tr)} images, predict {len(te)}")
        metas.append(train_model(name, fold_store.ds, fold_store, recipe, size, member_dir / f"fold-{f}", seed,
                                 extra_meta={**extra, "fold": f, "folds": k}, **train_kw))
    return _write_member(name, ds, plan, metas, member_dir, optimistic, extra)


def _write_member(name, ds, plan, metas, member_dir: Path, optimistic: bool, extra: dict | None = None) -> dict:
    """Out-of-fold probabilities over the pool (each image from the one model that did not train on it) and the
    fold mean on test, with the member's run.json; `extra` (the command's extra_meta, e.g. `from_study`) is
    recorded in it as in every fold's."""
    k, fold = plan["k"], np.asarray(plan["fold"])
    _, labels = pool(ds)
    nc = ds.num_classes
    oof = {}
    test = {"plain": 0.0, "flip": 0.0}
    for f in range(k):
        fdir = member_dir / f"fold-{f}"
        with np.load(fdir / "probs_val.npz") as z:
            if not (z["labels"] == labels[fold == f]).all():
                raise ValueError(f"{fdir}: its val rows are not fold {f} of {member_dir / 'folds.json'}")
            for view in ("plain", "flip"):
                oof.setdefault(view, np.zeros((len(labels), z[view].shape[1]), np.float32))[fold == f] = z[view]
        with np.load(fdir / "probs_test.npz") as z:
            for view in test:
                test[view] = test[view] + z[view] / k
    save_probs(member_dir / "probs_val.npz", **oof, labels=labels, fold=fold)
    save_probs(member_dir / "probs_test.npz", **test)
    first = metas[0]
    meta = {**{key: first[key] for key in ("name", "init", "params", "input", "device", "torch",
                                           "data_root", "data_layout", "num_classes", "attributes", "class_names")
                                           if key in first},
            # a test prediction runs all K fold models: K x one model's cost per image
            "gflops": round(k * first["gflops"], 4), "gflops_per_model": first["gflops"],
            "kind": "model", "status": "done", "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "config": {**first["config"], "dataset": ds.fingerprint()},
            "kfold": {"k": k, "seed": plan["seed"], "signature": plan["signature"], "n": plan["n"],
                      "oof_optimistic": optimistic, "folds": [f"fold-{f}" for f in range(k)]},
            "scored_on": plan["signature"],
            "train_class_counts": [c.tolist() for c in class_counts(labels, nc)],
            "train_time_s": round(sum(m["train_time_s"] for m in metas), 2),
            "img_per_s": float(np.median([m["img_per_s"] for m in metas])),
            "best_epoch": [m["best_epoch"] for m in metas],
            "val": score(labels, probs_to_pred(oof["plain"], nc), nc, ds.attributes),
            "val_tta": score(labels, probs_to_pred((oof["plain"] + oof["flip"]) / 2, nc), nc, ds.attributes),
            **(extra or {})}
    write_json(meta, member_dir / "run.json")
    v = meta["val"]
    print(f"[{name}] {k}-fold out-of-fold over {plan['n']} images: overall {v['overall_acc']:.4f}, class-average "
          f"{v['class_avg_acc']:.4f}{' (optimistic: epochs selected on the predicted folds)' if optimistic else ''}"
          f" -> {member_dir}")
    return meta


def refit(name: str, ds: FashionDataset, store: ImageStore, recipe: Recipe, size: int, member_dir: Path,
          seed: int = 0, **train_kw) -> dict:
    """Train on train + val for the epochs the finished val run in `member_dir` used; its test probabilities become
    the member's. Returns the member's updated run.json contents."""
    member_dir = Path(member_dir)
    meta = read_run(member_dir).meta
    if meta.get("status") != "done":
        raise ValueError(f"{member_dir}: --refit needs the finished val run first")
    epochs = recipe.epochs if recipe.select == "last" else int(meta["best_epoch"])
    paths, _ = pool(ds)
    everything, n_train = np.arange(len(paths)), len(ds.splits["train"])
    val_rows = everything[n_train:]  # still shown per epoch, but now in training: in-sample, never used to select
    refit_store = SubsetStore(store, fold_dataset(ds, everything, val_rows),
                              {"train": pool_sources(everything, n_train), "val": [("val", val_rows - n_train)],
                               "test": [("test", np.arange(len(ds.splits["test"])))]})
    print(f"[{name}] refit on train + val ({len(paths)} images) for {epochs} epochs (the val run's)")
    rmeta = train_model(name, refit_store.ds, refit_store, recipe.updated(epochs=epochs, select="last",
                                                                          early_stop=0), size,
                        member_dir / "refit", seed, **train_kw)
    if "refit" not in meta:  # probs_test.npz is still the val run's (a finished refit has replaced it already)
        atomic_write(member_dir / "probs_test_valrun.npz",
                     lambda tmp: tmp.write_bytes((member_dir / "probs_test.npz").read_bytes()))
    valrun_s = meta["refit"]["valrun_train_time_s"] if "refit" in meta else meta["train_time_s"]
    with np.load(member_dir / "refit" / "probs_test.npz") as z:
        save_probs(member_dir / "probs_test.npz", plain=z["plain"], flip=z["flip"])
    meta["refit"] = {"epochs": epochs, "train_images": len(paths), "dir": "refit",
                     "note": "test probabilities from the refit model; val statistics from the val run",
                     "train_time_s": rmeta["train_time_s"], "valrun_train_time_s": valrun_s}
    meta["train_time_s"] = round(valrun_s + rmeta["train_time_s"], 2)  # what the member cost: both trainings
    write_json(meta, member_dir / "run.json")
    return meta
