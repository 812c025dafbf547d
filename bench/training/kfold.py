"""Use every labelled image: k-fold cross-fitting over train + val (or over train alone, for distillation), and
refitting on train + val.

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

Cross-fitting over train alone (`bench.run --folds K --pool train`): the pool is the train split; fold model f
trains on the other K-1 folds of train and is scored on the real val split like any run (its run folder is a normal
one: val curves, val and test probabilities), then predicts its held-out train fold (`probs_heldout.npz`, keyed to
its best.pt). The member folder holds probs_train_oof.npz (every training image predicted by the one fold model that
never saw it: `plain`, `flip`, `labels`, `fold`, `paths`), probs_val.npz and probs_test.npz (the mean of the K
models; no fold model trained on a val image, so val stays a clean judge and the member is scored on val like a
normal run: its run.json has no `kfold` and no `scored_on`, and `crossfit` says what it is). bench.distill reads
probs_train_oof.npz as the training images' out-of-fold teacher targets (bench/distilling/teacher.py).

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

from bench.artifacts import atomic_write, digest, load_npz, read_run, save_probs, write_json, write_run
from bench.data import FashionDataset, Split, class_counts
from bench.data.folds import stratified_folds
from bench.errors import ConfigMismatch
from bench.metrics import probs_to_pred, score
from bench.training.train import ImageStore, train_model
from bench.training.trainer import MappedImages, Split as TrainSplit, predict
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


POOLS = ("train+val", "train")  # bench.run --pool: what k-fold cross-fits over
HELDOUT = "probs_heldout.npz"     # a --pool train fold model's predictions of the train fold it did not see
OOF_TRAIN = "probs_train_oof.npz"  # a --pool train member's out-of-fold probabilities of every training image


def pool(ds: FashionDataset, which: str = "train+val") -> tuple[tuple[str, ...], np.ndarray]:
    """Paths and labels of the labelled pool: train + val, or train alone (`which`, one of POOLS)."""
    tr, va = ds.splits["train"], ds.splits["val"]
    if which == "train":
        return tr.paths, tr.labels
    if which != "train+val":
        raise ValueError(f"--pool {which}: one of {', '.join(POOLS)}")
    return tr.paths + va.paths, np.concatenate([tr.labels, va.labels])


def pool_sources(rows: np.ndarray, n_train: int) -> list[tuple[str, np.ndarray]]:
    """Pool rows as (parent split, rows of it), in pool order."""
    rows = np.sort(rows)
    return [("train", rows[rows < n_train]), ("val", rows[rows >= n_train] - n_train)]


def plan_folds(ds: FashionDataset, k: int, seed: int, which: str = "train+val") -> dict:
    """Fold ids of the pool (`which`: POOLS) and a signature naming this exact partition (pool, labels, K, seed)."""
    if k < 2:
        raise ValueError(f"--folds {k}: k-fold needs at least 2 folds")
    paths, labels = pool(ds, which)
    if len(paths) < 2 * k:
        raise ValueError(f"--folds {k}: the pool ({which.replace('+', ' + ')}) has only {len(paths)} images")
    fold = stratified_folds(labels, k, seed)
    sig = hashlib.sha256("\n".join(paths).encode() + labels.tobytes() + fold.tobytes()).hexdigest()[:12]
    if which == "train":  # another name space: a train-only partition is never taken for a train + val one
        return {"k": k, "seed": seed, "signature": f"cf-k{k}-{sig}", "n": len(paths), "fold": fold.tolist(),
                "pool": which}
    return {"k": k, "seed": seed, "signature": f"oof-k{k}-{sig}", "n": len(paths), "fold": fold.tolist()}


def fold_dataset(ds: FashionDataset, train_rows: np.ndarray, val_rows: np.ndarray) -> FashionDataset:
    paths, labels = pool(ds)
    pick = lambda name, rows: Split(name, tuple(paths[i] for i in rows), labels[rows])  # noqa: E731
    return FashionDataset(ds.root, ds.class_names, {"train": pick("train", train_rows), "val": pick("val", val_rows),
                                                    "test": ds.splits["test"]}, ds.attributes, ds.layout)


def train_kfold(name: str, ds: FashionDataset, store: ImageStore, recipe: Recipe, size: int, member_dir: Path,
                k: int, seed: int = 0, fold_seed: int = 0, pool_name: str = "train+val", **train_kw) -> dict:
    """Train the K fold models of one member (finished folds are skipped) and write the member's out-of-fold and
    test probabilities; returns the member's run.json contents. `pool_name` "train": cross-fit over the train split
    alone (train_crossfit)."""
    member_dir = Path(member_dir)
    plan = plan_folds(ds, k, fold_seed, pool_name)
    if (member_dir / "run.json").exists():
        held = read_run(member_dir).meta
        kind = "kfold" if pool_name == "train+val" else "crossfit"
        if kind not in held:
            what = ("a k-fold member over train + val" if "kfold" in held else "a k-fold member over train alone "
                    "(--pool train)" if "crossfit" in held else "a normal (train/val) run")
            raise ConfigMismatch(f"{member_dir} holds {what}; use another --run name for this "
                                 f"{'k-fold' if kind == 'kfold' else '--pool train'} member")
    folds_file = member_dir / "folds.json"
    if folds_file.exists() and not train_kw.get("force") and \
            json.loads(folds_file.read_text())["signature"] != plan["signature"]:
        raise ConfigMismatch(f"{folds_file} records another partition (other data, K or --fold-seed); use another "
                             f"--run name, or --force to retrain every fold")
    member_dir.mkdir(parents=True, exist_ok=True)
    paths, labels = pool(ds, pool_name)
    write_json({**plan, "pool": list(paths)}, folds_file)
    if pool_name == "train":
        return train_crossfit(name, ds, store, recipe, size, member_dir, plan, seed, **train_kw)
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


def fold_summary(metas: list[dict], labels: np.ndarray, probs: dict, nc, attributes) -> dict:
    """What a member of K fold models records of them: the time of all K trainings, their median speed, each fold's
    selected epoch, and its scores on `labels` from `probs` (plain, and plain + flip)."""
    return {"train_time_s": round(sum(m["train_time_s"] for m in metas), 2),
            "img_per_s": float(np.median([m["img_per_s"] for m in metas])),
            "best_epoch": [m["best_epoch"] for m in metas],
            "val": score(labels, probs_to_pred(probs["plain"], nc), nc, attributes),
            "val_tta": score(labels, probs_to_pred((probs["plain"] + probs["flip"]) / 2, nc), nc, attributes)}


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
        z = load_npz(fdir / "probs_val.npz")
        if not (z["labels"] == labels[fold == f]).all():
            raise ValueError(f"{fdir}: its val rows are not fold {f} of {member_dir / 'folds.json'}")
        for view in ("plain", "flip"):
            oof.setdefault(view, np.zeros((len(labels), z[view].shape[1]), np.float32))[fold == f] = z[view]
        z = load_npz(fdir / "probs_test.npz")
        for view in test:
            test[view] = test[view] + z[view] / k
    save_probs(member_dir / "probs_val.npz", **oof, labels=labels, fold=fold)
    save_probs(member_dir / "probs_test.npz", **test)
    first = metas[0]
    meta = {**{key: first[key] for key in ("name", "init", "params", "input", "device", "precision", "layout", "torch",
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
            **fold_summary(metas, labels, oof, nc, ds.attributes),
            **(extra or {})}
    write_run(meta, member_dir)
    v = meta["val"]
    print(f"[{name}] {k}-fold out-of-fold over {plan['n']} images: overall {v['overall_acc']:.4f}, class-average "
          f"{v['class_avg_acc']:.4f}{' (optimistic: epochs selected on the predicted folds)' if optimistic else ''}"
          f" -> {member_dir}")
    return meta


def train_crossfit(name: str, ds: FashionDataset, store: ImageStore, recipe: Recipe, size: int, member_dir: Path,
                   plan: dict, seed: int = 0, **train_kw) -> dict:
    """`--pool train`: the K fold models over the train split (each a normal run scored on val), each one's
    predictions of its held-out train fold, and the member (probs_train_oof.npz, the K models' mean on val and
    test); returns the member's run.json contents. Finished folds and held-out predictions are skipped."""
    k, fold = plan["k"], np.asarray(plan["fold"])
    n_val, n_test = len(ds.splits["val"]), len(ds.splits["test"])
    extra = train_kw.pop("extra_meta", None) or {}
    metas = []
    for f in range(k):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        fdir = member_dir / f"fold-{f}"
        if train_kw.get("force"):  # its held-out predictions came from the weights --force retrains
            (fdir / HELDOUT).unlink(missing_ok=True)
        fold_ds = FashionDataset(ds.root, ds.class_names,
                                 {"train": Split("train", tuple(ds.splits["train"].paths[i] for i in tr),
                                                 ds.splits["train"].labels[tr]),
                                  "val": ds.splits["val"], "test": ds.splits["test"]}, ds.attributes, ds.layout)
        fold_store = SubsetStore(store, fold_ds, {"train": [("train", tr)], "val": [("val", np.arange(n_val))],
                                                  "test": [("test", np.arange(n_test))]})
        print(f"[{name}] fold {f + 1}/{k} (pool train): train on {len(tr)} images, predict the other {len(te)}; "
              f"scored on val")
        meta = train_model(name, fold_ds, fold_store, recipe, size, fdir, seed,
                           extra_meta={**extra, "fold": f, "folds": k, "pool": "train"}, **train_kw)
        metas.append(predict_heldout(name, ds, store, recipe, size, fdir, meta, te))
    return _write_crossfit_member(name, ds, plan, metas, member_dir, extra)


def predict_heldout(name: str, ds: FashionDataset, store: ImageStore, recipe: Recipe, size: int, fold_dir: Path,
                    meta: dict, rows: np.ndarray) -> dict:
    """A finished --pool train fold model's probabilities (plain, flip) of its held-out train rows, decoded as val
    is (at `size`), written to fold_dir/probs_heldout.npz with the sha256 of the best.pt that made them and recorded
    in the fold's run.json; kept when they are there and came from the fold's current best.pt. Returns the fold's
    run.json contents."""
    ckpt = meta.get("files", {}).get("best.pt", {}).get("sha256") or digest(fold_dir / "best.pt")["sha256"]
    if (fold_dir / HELDOUT).exists() and HELDOUT in meta.get("files", {}):
        z = load_npz(fold_dir / HELDOUT)
        if str(z["checkpoint"]) == ckpt and np.array_equal(z["rows"], rows):
            return meta
    paths = tuple(ds.splits["train"].paths[i] for i in rows)
    held_ds = FashionDataset(ds.root, ds.class_names, {"train": ds.splits["train"], "val": ds.splits["val"],
                                                       "test": Split("test", paths, None)}, ds.attributes, ds.layout)
    x = SubsetStore(store, held_ds, {"test": [("train", rows)]}).split("test", size, recipe.resize).x
    model = _fold_model(meta, fold_dir / "best.pt").to(store.device)
    probs = {view: predict(model, x, 256, flip=view == "flip").cpu().numpy() for view in ("plain", "flip")}
    save_probs(fold_dir / HELDOUT, **probs, rows=rows, labels=ds.splits["train"].labels[rows],
               checkpoint=np.array(ckpt))
    print(f"[{name}] {fold_dir.name}: predicted its {len(rows)} held-out training images -> {fold_dir / HELDOUT}")
    return write_run(dict(meta), fold_dir)  # records the new file's digest beside the fold's others


def _fold_model(meta: dict, ckpt: Path) -> torch.nn.Module:
    """The network a fold trained (its run.json `meta`) with the weights of `ckpt`, read by the safe loader
    (bench/checkpoints.py, verified against the fold's recorded digest), normalising its input as it trained."""
    from bench import checkpoints
    from zoo import create_model
    cfg = meta["config"]
    model, _ = create_model(cfg["model"], tuple(meta["num_classes"]), cfg["recipe"]["dropout"],
                            cfg["recipe"]["hidden"], "none")
    model.load_state_dict(checkpoints.load_weights(ckpt))
    model.set_input_config(meta["input"]["mean"], meta["input"]["std"])
    return model.eval()


def _write_crossfit_member(name, ds, plan, metas, member_dir: Path, extra: dict | None = None) -> dict:
    """probs_train_oof.npz (each training image from the one fold model that did not train on it), the K models'
    mean on val (with the val labels) and test, and the member's run.json."""
    k, fold = plan["k"], np.asarray(plan["fold"])
    tr = ds.splits["train"]
    nc = ds.num_classes
    oof, val, test = {}, {"plain": 0.0, "flip": 0.0}, {"plain": 0.0, "flip": 0.0}
    for f in range(k):
        fdir = member_dir / f"fold-{f}"
        z = load_npz(fdir / HELDOUT)
        if not np.array_equal(z["rows"], np.flatnonzero(fold == f)):
            raise ValueError(f"{fdir / HELDOUT}: its rows are not fold {f} of {member_dir / 'folds.json'}")
        for view in ("plain", "flip"):
            oof.setdefault(view, np.zeros((len(tr), z[view].shape[1]), np.float32))[fold == f] = z[view]
        z = load_npz(fdir / "probs_val.npz")
        if not np.array_equal(z["labels"], ds.splits["val"].labels):
            raise ValueError(f"{fdir}: its val split is not this dataset's")
        for view in val:
            val[view] = val[view] + z[view] / k
        z = load_npz(fdir / "probs_test.npz")
        for view in test:
            test[view] = test[view] + z[view] / k
    save_probs(member_dir / OOF_TRAIN, **oof, labels=tr.labels, fold=fold, paths=np.array(tr.paths))
    save_probs(member_dir / "probs_val.npz", **val, labels=ds.splits["val"].labels)
    save_probs(member_dir / "probs_test.npz", **test)
    first = metas[0]
    vl = ds.splits["val"].labels
    stamps = [m.get("finished") for m in metas]
    old = read_run(member_dir).meta if (member_dir / "run.json").exists() else {}
    # the member is the same as long as its folds are: re-running the command keeps its finish time, so an ensemble
    # entry or a student that recorded this member (member_identity) does not take it for retrained
    same = (old.get("crossfit") or {}).get("fold_finished") == stamps and old.get("finished")
    meta = {**{key: first[key] for key in ("name", "init", "params", "input", "device", "torch", "data_root",
                                           "data_layout", "num_classes", "attributes", "class_names", "data_mode")
               if key in first},
            "gflops": round(k * first["gflops"], 4), "gflops_per_model": first["gflops"],
            "kind": "model", "status": "done", "finished": same or time.strftime("%Y-%m-%d %H:%M:%S"),
            "config": {**first["config"], "dataset": ds.fingerprint()},
            "crossfit": {"k": k, "seed": plan["seed"], "signature": plan["signature"], "pool": "train",
                         "n_train": len(tr), "folds": [f"fold-{f}" for f in range(k)], "fold_finished": stamps,
                         "note": f"{k} fold models over the train split; {OOF_TRAIN}: each training image predicted "
                                 f"by the one fold model that never trained on it; val and test: the mean of the "
                                 f"{k} models, none of which trained on a val image (val scored like a normal run)"},
            "train_class_counts": [c.tolist() for c in class_counts(tr.labels, nc)],
            **fold_summary(metas, vl, val, nc, ds.attributes),
            **(extra or {})}
    write_run(meta, member_dir)
    print(f"[{name}] {k}-fold cross-fit over train ({len(tr)} images out of fold in {member_dir / OOF_TRAIN}); "
          f"the {k} models' mean on val: overall {meta['val']['overall_acc']:.4f}, class-average "
          f"{meta['val']['class_avg_acc']:.4f} -> {member_dir}")
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
    z = load_npz(member_dir / "refit" / "probs_test.npz")
    save_probs(member_dir / "probs_test.npz", plain=z["plain"], flip=z["flip"])
    meta["refit"] = {"epochs": epochs, "train_images": len(paths), "dir": "refit",
                     "note": "test probabilities from the refit model; val statistics from the val run",
                     "train_time_s": rmeta["train_time_s"], "valrun_train_time_s": valrun_s}
    meta["train_time_s"] = round(valrun_s + rmeta["train_time_s"], 2)  # what the member cost: both trainings
    write_run(meta, member_dir)
    return meta
