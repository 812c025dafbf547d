"""Combine trained models into one prediction file, with an honest estimate of the gain.

    python -m bench.ensemble [--runs default] [--models resnet18,effb3] [--weights caruana] [--combine mean]
                             [--tta plain,flip] [--out submission] [--force]

Members are the finished runs under runs/. Each member's probabilities are averaged over TTA views (`plain`, `flip`
are stored by training; others, e.g. `crop0.9` or `crop0.9+flip`, are computed from the member's best.pt once and
cached in its folder as tta_<split>.npz). Members are combined per attribute by arithmetic or geometric mean, with
uniform weights, weights fitted on val (log-loss), or Caruana et al.'s ensemble selection (ICML 2004: forward
selection with replacement, sorted initialisation, bagging), optionally per attribute. Fitted weights are also scored
by k-fold cross-validation over val images, so the reported gain is not only in-sample; the leaderboard entry
holds the out-of-fold val probabilities, so every statistic the report shows for it is out-of-sample.
Writes OUT/prediction.txt (test.txt order, 6 ints per line, validated first) and OUT/prediction.zip, and an
ensemble entry runs/_ensembles/<name>/ that the leaderboard report picks up.
"""
from __future__ import annotations

import argparse
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from sklearn.model_selection import KFold

from bench.artifacts import ArtifactError, RunArtifacts, find_runs, save_probs, write_json
from bench.data import DatasetError, open_dataset
from bench.images import load_images
from bench.metrics import format_score, probs_to_pred, score, split_probs
from bench.score import format_predictions, read_predictions
from bench.augment import normalize
from bench.trainer import autocast, pick_device

STORED_VIEWS = ("plain", "flip")
WEIGHTINGS = ("uniform", "fitted", "caruana")


class EnsembleError(RuntimeError):
    pass


# --- members ----------------------------------------------------------------------------------------------------

def check_members(members: list[RunArtifacts]) -> None:
    if not members:
        raise EnsembleError("no finished runs found; train some first: python -m bench.run --models resnet18,effb3")
    fps = {}
    for m in members:
        fps.setdefault(m.meta["config"]["dataset"], []).append(m.label)
    if len(fps) > 1:
        groups = "; ".join(f"{fp}: {', '.join(labels)}" for fp, labels in fps.items())
        raise EnsembleError(f"members were trained on different datasets (fingerprints {groups}); "
                            f"choose members of one dataset with --runs/--models")
    ncs = {tuple(m.meta["num_classes"]) for m in members}
    if len(ncs) > 1:
        raise EnsembleError(f"members disagree on class counts {sorted(ncs)}")


def view_images(x: torch.Tensor, view: str) -> torch.Tensor:
    """Normalised batch for a TTA view: plain | flip | cropF (centre crop fraction F, resized back) [+flip]."""
    name, _, flip = view.partition("+")
    xb = normalize(x)
    if name.startswith("crop"):
        frac = float(name[4:])
        s = xb.shape[-1]
        c = max(1, round(s * frac))
        o = (s - c) // 2
        xb = F.interpolate(xb[..., o:o + c, o:o + c], size=(s, s), mode="bilinear", align_corners=False)
    elif name not in ("plain", "flip"):
        raise ValueError(f"unknown TTA view {view!r}: use plain, flip, cropF or cropF+flip (e.g. crop0.9+flip)")
    if name == "flip" or flip == "flip":
        xb = xb.flip(3)
    return xb


@torch.no_grad()
def compute_views(member: RunArtifacts, missing: dict[str, list[str]], data_root: Path | None, device) -> dict:
    """TTA probabilities from the member's best.pt for the views each split lacks (the model is built once)."""
    from zoo import create_model
    device = torch.device(device)
    meta, ckpt = member.meta, member.dir / "best.pt"
    if not ckpt.exists():
        raise EnsembleError(f"{member.label}: probabilities for views {missing} are missing and there is no "
                            f"checkpoint {ckpt} to recompute them")
    cfg, recipe = meta["config"], meta["config"]["recipe"]
    root = Path(data_root or meta["data_root"])
    ds = open_dataset(root, check_images=False)
    if ds.fingerprint() != cfg["dataset"]:
        raise EnsembleError(f"{member.label}: dataset at {root} differs from the one it was trained on; pass --data")
    model, _ = create_model(cfg["model"], tuple(meta["num_classes"]), recipe["dropout"], recipe["hidden"], "none")
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["model"])
    model.to(device).eval()
    out = {}
    for split, views in missing.items():
        images = load_images(ds.files(split), cfg["size"], recipe["resize"], progress=False)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).to(device)
        out[split] = {}
        for view in views:
            parts = []
            for i in range(0, len(x), 128):
                with autocast(device):
                    logits = model(view_images(x[i:i + 128], view))
                parts.append(torch.cat([z.float().softmax(-1) for z in logits], 1).cpu())
            out[split][view] = torch.cat(parts).numpy()
    return out


def member_views(member: RunArtifacts, views: list[str], data_root, device,
                 splits=("val", "test")) -> dict[str, dict[str, np.ndarray]]:
    """Per split: stored probabilities (plain, flip, labels) plus cached or freshly computed TTA views."""
    have = {}
    for split in splits:
        stored = member.load_probs(split) if member.has_probs(split) else {}
        cache_path = member.dir / f"tta_{split}.npz"
        have[split] = {**(dict(np.load(cache_path)) if cache_path.exists() else {}), **stored}
    missing = {s: [v for v in views if v not in have[s]] for s in splits}
    missing = {s: v for s, v in missing.items() if v}
    if missing:
        print(f"  {member.label}: computing TTA views {missing} from best.pt")
        for split, computed in compute_views(member, missing, data_root, device).items():
            have[split].update(computed)
            extra = {k: v for k, v in have[split].items() if k not in (*STORED_VIEWS, "labels")}
            save_probs(member.dir / f"tta_{split}.npz", **extra)
    return have


def tta_mean(probs: dict[str, np.ndarray], views: list[str]) -> np.ndarray:
    return np.mean([probs[v] for v in views], axis=0)


def member_probs(member: RunArtifacts, split: str, views: list[str], data_root, device) -> np.ndarray:
    """One split's probabilities averaged over `views`."""
    return tta_mean(member_views(member, views, data_root, device, (split,))[split], views)


# --- combining ---------------------------------------------------------------------------------------------------

def combine(probs: list[np.ndarray], weights: np.ndarray, num_classes, method: str = "mean") -> np.ndarray:
    """Weighted combination per attribute. `weights` is (M,) or (M, attributes)."""
    w = np.asarray(weights, float)
    if w.ndim == 1:
        w = np.repeat(w[:, None], len(num_classes), 1)
    parts = []
    for a, block in enumerate(zip(*[split_probs(p, num_classes) for p in probs])):
        wa = w[:, a] / max(w[:, a].sum(), 1e-12)
        stack = np.stack(block)  # (M, N, k)
        if method == "mean":
            comb = np.tensordot(wa, stack, 1)
        elif method == "geometric":
            comb = np.exp(np.tensordot(wa, np.log(np.clip(stack, 1e-8, 1)), 1))
            comb /= comb.sum(1, keepdims=True)
        else:
            raise ValueError(f"unknown combination {method!r}: mean or geometric")
        parts.append(comb)
    return np.concatenate(parts, 1)


def _attr_nll(probs: np.ndarray, labels: np.ndarray, num_classes) -> np.ndarray:
    return np.array([-np.log(np.clip(p[np.arange(len(p)), labels[:, a]], 1e-8, 1)).mean()
                     for a, p in enumerate(split_probs(probs, num_classes))])


def caruana(probs, labels, num_classes, method="mean", iters: int = 25, init: int = 2, bags: int = 20,
            bag_frac: float = 0.6, per_attribute: bool = False, seed: int = 0) -> np.ndarray:
    """Ensemble selection: weights = how often each member was picked, averaged over bags.

    Candidates are scored by accuracy (log-loss breaks ties) of the running average with them added, kept as a
    running sum per attribute so each step costs one pass over the val probabilities per candidate.
    """
    m, n_attr = len(probs), len(num_classes)
    blocks = [np.stack(b) for b in zip(*[split_probs(p, num_classes) for p in probs])]  # per attribute (M, N, k)
    if method == "geometric":
        blocks = [np.log(np.clip(b, 1e-8, 1)) for b in blocks]
    rows = np.arange(len(labels))

    def quality(sums: dict, count: float) -> tuple[float, float]:
        acc, nll = [], []
        for a, total in sums.items():
            avg = total / count
            if method == "geometric":
                avg = np.exp(avg - avg.max(1, keepdims=True))
                avg /= avg.sum(1, keepdims=True)
            acc.append((avg.argmax(1) == labels[:, a]).mean())
            nll.append(-np.log(np.clip(avg[rows, labels[:, a]], 1e-8, 1)).mean())
        return float(np.mean(acc)), -float(np.mean(nll))

    rng = np.random.default_rng(seed)
    groups = [[a] for a in range(n_attr)] if per_attribute else [list(range(n_attr))]
    total = np.zeros((m, n_attr))
    for _ in range(max(1, bags)):
        size = max(min(m, 2), round(m * bag_frac))  # a one-member bag would force a weak member in
        pool = list(range(m)) if bags <= 1 else sorted(rng.choice(m, size, replace=False).tolist())
        for attrs in groups:
            counts = np.zeros(m)
            sums = {a: np.zeros_like(blocks[a][0]) for a in attrs}

            def gain(i):
                return quality({a: sums[a] + blocks[a][i] for a in attrs}, counts.sum() + 1)

            def add(i):
                counts[i] += 1
                for a in attrs:
                    sums[a] += blocks[a][i]

            for i in sorted(pool, key=lambda i: quality({a: blocks[a][i] for a in attrs}, 1), reverse=True)[:init]:
                add(i)  # sorted initialisation with the best few members
            for _ in range(iters):  # forward selection with replacement
                add(max(pool, key=gain))
            total[:, attrs] += (counts / counts.sum())[:, None]
    w = total / total.sum(0, keepdims=True)
    return w if per_attribute else w[:, 0]


def fit_weights(probs, labels, num_classes, method="mean", per_attribute: bool = False) -> np.ndarray:
    """Weights minimising val log-loss (softmax-parameterised, so they stay on the simplex)."""
    m, n_attr = len(probs), len(num_classes)

    def weights_for(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    def fit(cols):
        def loss(z):
            w = np.zeros((m, n_attr))
            w[:, cols] = weights_for(z)[:, None]
            w[:, [c for c in range(n_attr) if c not in cols]] = 1
            return _attr_nll(combine(probs, w, num_classes, method), labels, num_classes)[cols].mean()
        return weights_for(minimize(loss, np.zeros(m), method="L-BFGS-B").x)

    if not per_attribute:
        return fit(list(range(n_attr)))
    return np.stack([fit([a]) for a in range(n_attr)], 1)


def get_weights(scheme, probs, labels, num_classes, method, per_attribute, seed=0) -> np.ndarray:
    if scheme == "uniform":
        return np.ones(len(probs)) / len(probs)
    if scheme == "fitted":
        return fit_weights(probs, labels, num_classes, method, per_attribute)
    if scheme == "caruana":
        return caruana(probs, labels, num_classes, method, per_attribute=per_attribute, seed=seed)
    raise ValueError(f"unknown weighting {scheme!r}; choose one of {WEIGHTINGS}")


def cross_validate(scheme, probs, labels, num_classes, method="mean", per_attribute=False, folds: int = 5,
                   seed: int = 0) -> tuple[dict, np.ndarray]:
    """Weights fitted on k-1 folds of val, applied to the held-out fold: score and out-of-fold probabilities."""
    oof = np.zeros_like(probs[0])
    for train_idx, test_idx in KFold(folds, shuffle=True, random_state=seed).split(labels):
        w = get_weights(scheme, [p[train_idx] for p in probs], labels[train_idx], num_classes, method,
                        per_attribute, seed)
        oof[test_idx] = combine([p[test_idx] for p in probs], w, num_classes, method)
    return score(labels, probs_to_pred(oof, num_classes), num_classes), oof


# --- output -----------------------------------------------------------------------------------------------------

def write_submission(pred: np.ndarray, out: Path, num_classes, force: bool = False) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    txt, zpath = out / "prediction.txt", out / "prediction.zip"
    for f in (txt, zpath):
        if f.exists() and not force:
            raise EnsembleError(f"{f} exists; pass --force to overwrite it or choose another --out")
    tmp = out / "prediction.txt.tmp"
    tmp.write_text(format_predictions(pred))
    read_predictions(tmp, num_classes, expected_lines=len(pred))  # the scorer's own validator, before it lands
    tmp.replace(txt)
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(txt, "prediction.txt")
    return txt, zpath


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.ensemble", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--runs", help="comma-separated run names (or run/model labels); default all")
    p.add_argument("--models", help="comma-separated model names; default all")
    p.add_argument("--tta", default="plain,flip", help="views averaged per member: plain,flip,cropF,cropF+flip")
    p.add_argument("--combine", default="mean", choices=["mean", "geometric"])
    p.add_argument("--weights", default="caruana", choices=WEIGHTINGS)
    p.add_argument("--per-attribute", action="store_true", help="separate weights for each attribute")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds over val for fitted weights")
    p.add_argument("--data", help="dataset root, if it moved since training (for recomputing TTA views)")
    p.add_argument("--name", default="ensemble", help="name of the ensemble entry on the leaderboard")
    p.add_argument("--out", default="submission", help="folder for prediction.txt and prediction.zip")
    p.add_argument("--force", action="store_true", help="overwrite an existing prediction file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-report", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    split_list = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    views = split_list(a.tta)
    try:
        members = [m for m in find_runs(a.runs_dir, split_list(a.runs), split_list(a.models), done_only=True)
                   if m.meta.get("kind", "model") == "model"]
        check_members(members)
        device = pick_device()
        nc = tuple(members[0].meta["num_classes"])
        loaded = {m.label: member_views(m, views, a.data, device) for m in members}
        labels = loaded[members[0].label]["val"].get("labels")
        if labels is None:
            raise EnsembleError("the members' val split has no labels: nothing to fit or score on")
        val = {n: tta_mean(h["val"], views) for n, h in loaded.items()}
        plain = {n: h["val"]["plain"] for n, h in loaded.items()}
        test = {n: tta_mean(h["test"], views) for n, h in loaded.items()}
    except (EnsembleError, ArtifactError, DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    names, probs = list(val), list(val.values())
    rows = []
    for name in names:
        rows.append((name, score(labels, probs_to_pred(plain[name], nc), nc)["overall_acc"],
                     score(labels, probs_to_pred(val[name], nc), nc)["overall_acc"]))
    weights = get_weights(a.weights, probs, labels, nc, a.combine, a.per_attribute, a.seed)
    uniform = score(labels, probs_to_pred(combine(probs, np.ones(len(probs)), nc, a.combine), nc), nc)
    in_sample = combine(probs, weights, nc, a.combine)
    fitted = score(labels, probs_to_pred(in_sample, nc), nc)
    cv, honest = (fitted, in_sample) if a.weights == "uniform" or len(labels) < 2 * a.folds else \
        cross_validate(a.weights, probs, labels, nc, a.combine, a.per_attribute, a.folds, a.seed)
    print(f"\nmembers ({len(names)}), val overall accuracy:      plain    TTA({'+'.join(views)})")
    for name, p_acc, t_acc in rows:
        print(f"  {name:<40} {p_acc:.4f}   {t_acc:.4f}")
    print(f"  {'ensemble, uniform weights':<40}          {uniform['overall_acc']:.4f}")
    print(f"  {'ensemble, ' + a.weights + ' weights (in-sample)':<40}          {fitted['overall_acc']:.4f}")
    print(f"  {'ensemble, ' + a.weights + f' weights ({a.folds}-fold CV)':<40}          {cv['overall_acc']:.4f}")
    w_show = weights if weights.ndim == 1 else weights.mean(1)
    print("weights: " + ", ".join(f"{n} {w:.2f}" for n, w in zip(names, w_show)))
    test_comb = combine(list(test.values()), weights, nc, a.combine)
    pred = probs_to_pred(test_comb, nc)
    try:
        txt, zpath = write_submission(pred, Path(a.out), nc, a.force)
    except (EnsembleError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    print(f"wrote {txt} ({len(pred)} lines) and {zpath}")
    result = {"kind": "ensemble", "status": "done", "name": a.name, "members": names, "views": views,
              "combine": a.combine, "weighting": a.weights, "per_attribute": a.per_attribute,
              "weights": weights.tolist(), "val": fitted, "val_uniform": uniform, "val_cv": cv,
              "members_val": {n: {"plain": p, "tta": t} for n, p, t in rows},
              "config": {"dataset": members[0].meta["config"]["dataset"]}, "dataset": members[0].meta["config"]["dataset"],
              "num_classes": list(nc), "class_names": members[0].meta["class_names"],
              "train_class_counts": members[0].meta.get("train_class_counts"),
              "params": sum(m.meta.get("params", 0) for m in members),
              "gflops": round(sum(m.meta.get("gflops", 0) for m in members) * len(views), 3),
              "train_time_s": round(sum(m.meta.get("train_time_s", 0) for m in members), 2),
              "device": members[0].meta.get("device"), "prediction": str(txt),
              "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    hidden = Path(a.data or members[0].meta["data_root"]) / "hidden" / "test_attr.txt"
    if hidden.exists():  # demo data only: its test labels exist for exactly this
        result["demo_test"] = score(read_predictions(hidden, nc), pred, nc)
        print(format_score(result["demo_test"], "demo test split (hidden labels)"))
    edir = Path(a.runs_dir) / "_ensembles" / a.name
    edir.mkdir(parents=True, exist_ok=True)
    save_probs(edir / "probs_val.npz", plain=honest, labels=labels)  # out-of-fold: the leaderboard stays honest
    save_probs(edir / "probs_test.npz", plain=test_comb)
    write_json(result, edir / "run.json")
    if not a.no_report:
        from bench.report import build_report
        build_report(a.runs_dir)
    return result


if __name__ == "__main__":
    main()
