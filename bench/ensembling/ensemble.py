"""Combine trained models into one prediction file, with an honest estimate of the gain (library of bench.ensemble).

Members are the finished runs under runs/. Each member's probabilities are averaged over TTA views (`plain`, `flip`
are stored by training; others, e.g. `crop0.9` or `crop0.9+flip`, are computed from the member's best.pt once and
cached in its folder as tta_<split>.npz). Members are combined per attribute by arithmetic or geometric mean, with
uniform weights, weights fitted on val (log-loss), or Caruana et al.'s ensemble selection (ICML 2004: forward
selection with replacement, sorted initialisation, bagging, each bag keeping its best-scoring ensemble size),
optionally per attribute. Fitted weights are also scored by k-fold cross-validation over val images (folds stratified
over all 6 attributes), and the leaderboard entry then holds those out-of-fold val probabilities. Only the weights
are cross-fitted: the members' epochs (and any tuned parameters) were chosen on the same val images, so the
ensemble's val score stays optimistic. Without CV (uniform weights, or fewer than 2 x folds val images) the entry is
in-sample; run.json's `val_scoring` says which, and the leaderboard shows it.
Checks first that OUT holds no prediction yet (--force overwrites), then writes OUT/prediction.txt (test.txt order,
6 ints per line, validated first) and OUT/prediction.zip, both atomically, and an ensemble entry
RUNS/_ensembles/<name>/ that the leaderboard report (rebuilt in RUNS' report folder) picks up.
"""
from __future__ import annotations

import os
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.artifacts import ArtifactError, RunArtifacts, find_runs, save_probs, write_json
from bench.data import DatasetError, format_predictions, read_predictions
from bench.data.folds import stratified_folds
from bench.ensembling.combiners import COMBINERS, combine
from bench.ensembling.decisions import DECISIONS
from bench.ensembling.views import parse_view
from bench.ensembling.weightings import WEIGHTINGS
from bench.metrics import format_score, score

STORED_VIEWS = ("plain", "flip")


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


def member_views(member: RunArtifacts, views: list[str], data_root, device,
                 splits=("val", "test")) -> dict[str, dict[str, np.ndarray]]:
    """Per split: stored probabilities (plain, flip, labels) plus cached or freshly computed TTA views.

    Cached views are keyed to the checkpoint they were computed from (best.pt's size and modification time): views
    of older weights (e.g. before `bench.run --force`) are never averaged in, they are recomputed."""
    have = {}
    key = checkpoint_key(member)
    for split in splits:
        stored = member.load_probs(split) if member.has_probs(split) else {}
        cache_path = member.dir / f"tta_{split}.npz"
        cached = dict(np.load(cache_path)) if cache_path.exists() else {}
        if str(cached.pop("checkpoint", "")) != key:
            cached = {}  # computed from other weights (or by a version that did not record them): stale
        have[split] = {**cached, **stored}
    missing = {s: [v for v in views if v not in have[s]] for s in splits}
    missing = {s: v for s, v in missing.items() if v}
    if missing:
        print(f"  {member.label}: computing TTA views {missing} from best.pt")
        from bench.ensembling.tta import compute_views  # torch loads only when a view must be computed
        for split, computed in compute_views(member, missing, data_root, device).items():
            have[split].update(computed)
            extra = {k: v for k, v in have[split].items() if k not in (*STORED_VIEWS, "labels")}
            save_probs(member.dir / f"tta_{split}.npz", checkpoint=np.array(key), **extra)
    return have


def checkpoint_key(member: RunArtifacts) -> str:
    """Identity of the weights TTA views come from: best.pt's size and modification time ('' if absent)."""
    ckpt = member.dir / "best.pt"
    if not ckpt.exists():
        return ""
    st = ckpt.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def tta_mean(probs: dict[str, np.ndarray], views: list[str]) -> np.ndarray:
    return np.mean([probs[v] for v in views], axis=0)


def member_probs(member: RunArtifacts, split: str, views: list[str], data_root, device) -> np.ndarray:
    """One split's probabilities averaged over `views`."""
    return tta_mean(member_views(member, views, data_root, device, (split,))[split], views)


def cross_validate(scheme, probs, labels, num_classes, method="mean", per_attribute=False, folds: int = 5,
                   seed: int = 0, decision: str = "argmax") -> tuple[dict, np.ndarray]:
    """Weights fitted on k-1 stratified folds of val, applied to the held-out fold: score and out-of-fold
    probabilities."""
    oof = np.zeros_like(probs[0])
    fold = stratified_folds(labels, folds, seed)
    for f in range(folds):
        train_idx, test_idx = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        w = WEIGHTINGS[scheme]([p[train_idx] for p in probs], labels[train_idx], num_classes, method,
                               per_attribute, seed)
        oof[test_idx] = combine([p[test_idx] for p in probs], w, num_classes, method)
    return score(labels, DECISIONS[decision](oof, num_classes), num_classes), oof


# --- output -----------------------------------------------------------------------------------------------------

def check_out(out: Path, force: bool) -> None:
    """Refuse an existing submission unless --force (checked before any work, and again before writing)."""
    for f in (out / "prediction.txt", out / "prediction.zip"):
        if f.exists() and not force:
            raise EnsembleError(f"{f} exists; pass --force to overwrite it or choose another --out")


def write_submission(pred: np.ndarray, out: Path, num_classes, force: bool = False) -> tuple[Path, Path]:
    """OUT/prediction.txt and OUT/prediction.zip, never half-written.

    Both are written and checked under unique temporary names first; then the old txt is removed, the zip renamed
    into place, then the txt (renames are atomic). So a prediction.txt always has its own zip beside it; a kill
    mid-way leaves the old pair, or a complete zip (old or new) without txt, never a broken file.
    """
    check_out(out, force)
    out.mkdir(parents=True, exist_ok=True)
    txt, zpath = out / "prediction.txt", out / "prediction.zip"
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_txt, tmp_zip = out / f".prediction-{tag}.txt.tmp", out / f".prediction-{tag}.zip.tmp"
    try:
        tmp_txt.write_text(format_predictions(pred))
        read_predictions(tmp_txt, num_classes, expected_lines=len(pred))  # the scorer's own validator
        with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as z:
            z.write(tmp_txt, "prediction.txt")
        with zipfile.ZipFile(tmp_zip) as z:
            if z.namelist() != ["prediction.txt"] or z.read("prediction.txt") != tmp_txt.read_bytes():
                raise EnsembleError(f"{tmp_zip}: the zip does not read back as written")
        txt.unlink(missing_ok=True)
        os.replace(tmp_zip, zpath)
        os.replace(tmp_txt, txt)
    finally:
        tmp_txt.unlink(missing_ok=True)
        tmp_zip.unlink(missing_ok=True)
    return txt, zpath


@dataclass
class EnsembleSpec:
    """What to ensemble and how: bench.ensemble's options (its --help says what each does)."""
    runs_dir: Path = Path("runs")
    runs: list[str] | None = None        # run names or run/model labels; None: all finished runs
    models: list[str] | None = None      # model names; None: all
    views: list[str] = field(default_factory=lambda: ["plain", "flip"])
    combine: str = "mean"                # combiners.py
    weights: str = "caruana"             # weightings.py
    decision: str = "argmax"             # decisions.py
    per_attribute: bool = False
    folds: int = 5
    data: Path | None = None             # dataset root, if it moved since training
    name: str = "ensemble"
    out: Path = Path("submission")
    force: bool = False
    seed: int = 0


def make_ensemble(a: EnsembleSpec, device) -> dict:
    """Prints the members and the ensemble side by side, writes the submission (OUT/prediction.txt and .zip) and the
    leaderboard entry RUNS/_ensembles/NAME/, returns the entry's run.json. Raises EnsembleError, ArtifactError,
    DatasetError or ValueError (an unknown registered name) before writing anything when members or options do
    not fit."""
    views = list(a.views)
    weighting, _, decision = WEIGHTINGS[a.weights], COMBINERS[a.combine], DECISIONS[a.decision]  # names fail first
    for v in views:
        parse_view(v)
    check_out(Path(a.out), a.force)  # before loading anything: a refusal at the end would waste the work
    members = [m for m in find_runs(a.runs_dir, a.runs, a.models, done_only=True)
               if m.meta.get("kind", "model") == "model"]
    check_members(members)
    nc = tuple(members[0].meta["num_classes"])
    loaded = {m.label: member_views(m, views, a.data, device) for m in members}
    labels = loaded[members[0].label]["val"].get("labels")
    if labels is None:
        raise EnsembleError("the members' val split has no labels: nothing to fit or score on")
    val = {n: tta_mean(h["val"], views) for n, h in loaded.items()}
    plain = {n: h["val"]["plain"] for n, h in loaded.items()}
    test = {n: tta_mean(h["test"], views) for n, h in loaded.items()}

    def decide(p):
        return decision(p, nc)
    names, probs = list(val), list(val.values())
    rows = []
    for name in names:
        rows.append((name, score(labels, decide(plain[name]), nc)["overall_acc"],
                     score(labels, decide(val[name]), nc)["overall_acc"]))
    weights = weighting(probs, labels, nc, a.combine, a.per_attribute, a.seed)
    uniform = score(labels, decide(combine(probs, np.ones(len(probs)), nc, a.combine)), nc)
    in_sample = combine(probs, weights, nc, a.combine)
    fitted = score(labels, decide(in_sample), nc)
    if a.weights != "uniform" and len(labels) >= 2 * a.folds:
        cv, honest = cross_validate(a.weights, probs, labels, nc, a.combine, a.per_attribute, a.folds, a.seed,
                                    a.decision)
        scoring = f"{a.folds}-fold CV (stratified)"
    else:  # what the leaderboard shows is then in-sample, and says so
        cv, honest = None, in_sample
        scoring = "in-sample (uniform weights, nothing fitted)" if a.weights == "uniform" else \
            f"in-sample (too few val images for {a.folds}-fold CV; optimistic)"
    print(f"\nmembers ({len(names)}), val overall accuracy:      plain    TTA({'+'.join(views)})")
    for name, p_acc, t_acc in rows:
        print(f"  {name:<40} {p_acc:.4f}   {t_acc:.4f}")
    print(f"  {'ensemble, uniform weights':<40}          {uniform['overall_acc']:.4f}")
    print(f"  {'ensemble, ' + a.weights + ' weights (in-sample)':<40}          {fitted['overall_acc']:.4f}")
    if cv is not None:
        print(f"  {'ensemble, ' + a.weights + f' weights ({scoring})':<40}          {cv['overall_acc']:.4f}")
    print(f"leaderboard entry scored: {scoring}")
    w_show = weights if weights.ndim == 1 else weights.mean(1)
    print("weights: " + ", ".join(f"{n} {w:.2f}" for n, w in zip(names, w_show)))
    test_comb = combine(list(test.values()), weights, nc, a.combine)
    pred = decide(test_comb)
    txt, zpath = write_submission(pred, Path(a.out), nc, a.force)
    print(f"wrote {txt} ({len(pred)} lines) and {zpath}")
    result = {"kind": "ensemble", "status": "done", "name": a.name, "members": names, "views": views,
              "combine": a.combine, "weighting": a.weights, "decision": a.decision, "per_attribute": a.per_attribute,
              "weights": weights.tolist(), "val": fitted, "val_uniform": uniform, "val_cv": cv,
              "val_scoring": scoring,
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
    save_probs(edir / "probs_val.npz", plain=honest, labels=labels)  # out-of-fold when CV ran (val_scoring)
    save_probs(edir / "probs_test.npz", plain=test_comb)
    write_json(result, edir / "run.json")
    return result
