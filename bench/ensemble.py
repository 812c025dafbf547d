"""Combine trained models into one prediction file, with an honest estimate of the gain.

    python -m bench.ensemble [--runs default] [--models resnet18,effb3] [--weights caruana] [--combine mean]
                             [--tta plain,flip] [--out submission] [--force]

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

import argparse
import os
import sys
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from bench.artifacts import ArtifactError, RunArtifacts, find_runs, save_probs, write_json
from bench.data import DatasetError, open_dataset
from bench.images import load_images
from bench.metrics import format_score, probs_to_pred, score, split_probs
from bench.score import format_predictions, read_predictions

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
        from bench.tta import compute_views  # torch loads only when a view must be computed
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

    Each bag returns the ensemble at its best-scoring size along the selection path (sizes init .. init + iters),
    not the last one (Caruana et al. 2004). Candidates are scored by accuracy (log-loss breaks ties) of the running
    average with them added, kept as a running sum per attribute so each step costs one pass over the val
    probabilities per candidate.
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
            best = quality(sums, counts.sum()), counts.copy()
            for _ in range(iters):  # forward selection with replacement, even when every candidate makes it worse
                gains = {i: gain(i) for i in pool}
                add(i := max(pool, key=gains.get))
                if gains[i] > best[0]:  # strictly: the smallest ensemble among equally good ones
                    best = gains[i], counts.copy()
            total[:, attrs] += (best[1] / best[1].sum())[:, None]
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


def stratified_folds(labels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold id (0..k-1) per row: iterative stratification (Sechidis et al., ECML 2011) over every (attribute, class).

    The rarest label still unassigned goes first; each of its rows goes to the fold that most lacks that label
    (then the one lacking most of the row's other labels, then rows, then at random); a last pass puts every class
    with >= k rows into every fold and evens fold sizes to within one row where possible. Rare classes so end up
    in all folds, which plain KFold leaves to chance.
    """
    labels = np.asarray(labels, np.int64).reshape(len(labels), -1)
    n = len(labels)
    ids = labels + np.cumsum([0, *(labels.max(0) + 1)])[:-1]  # (N, attributes) global label ids, distinct per row
    remaining = np.bincount(ids.ravel())
    want = np.tile(remaining / k, (k, 1))  # rows each fold still lacks per label
    size = np.full(k, n / k)  # rows each fold still lacks
    fold = np.full(n, -1)
    rng = np.random.default_rng(seed)
    while (fold < 0).any():
        left = np.where(remaining > 0, remaining, np.iinfo(np.int64).max)
        lab = rng.choice(np.flatnonzero(left == left.min()))
        for r in rng.permutation(np.flatnonzero((fold < 0) & (ids == lab).any(1))):
            best = np.flatnonzero(want[:, lab] == want[:, lab].max())
            lack = (want[np.ix_(best, ids[r])] > 0).sum(1)  # prefer folds that also lack the row's other labels
            best = best[lack == lack.max()]
            best = best[size[best] == size[best].max()]
            f = best[0] if len(best) == 1 else rng.choice(best)
            fold[r] = f
            want[f, ids[r]] -= 1
            size[f] -= 1
            remaining[ids[r]] -= 1
    return _repair(fold, ids, k)


def _repair(fold: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """What the greedy pass can leave: a label with >= k rows missing from a fold (fixed by swapping rows between
    folds where a swap empties no other such label), and fold sizes apart by more than one (fixed by moving rows
    from the largest fold to the smallest, preferring rows whose labels the largest has most surplus of)."""
    total = np.bincount(ids.ravel())
    needed = total >= k
    cnt = np.zeros((k, len(total)), int)
    np.add.at(cnt, (fold[:, None], ids), 1)

    def move(row, src, dst):
        fold[row] = dst
        cnt[src, ids[row]] -= 1  # a row's ids are distinct, so plain fancy indexing is enough
        cnt[dst, ids[row]] += 1

    for f, lab in zip(*np.nonzero((cnt == 0) & needed)):
        if cnt[f, lab]:  # an earlier swap filled it
            continue
        for r, s in ((r, s) for r in np.flatnonzero((ids == lab).any(1) & (cnt[fold, lab] > 1))
                     for s in np.flatnonzero(fold == f)):
            g, before = fold[r], cnt[[f, fold[r]]] > 0
            move(r, g, f)
            move(s, f, g)
            if not (before & (cnt[[f, g]] == 0) & needed).any():
                break
            move(s, g, f)  # undo: this swap would empty another needed label
            move(r, f, g)
    while (sizes := np.bincount(fold, minlength=k)).max() - sizes.min() > 1:
        g, f = sizes.argmax(), sizes.argmin()
        rows = np.flatnonzero(fold == g)
        ok = ~((cnt[g][ids[rows]] == 1) & needed[ids[rows]]).any(1)  # leaves every needed label in g
        if not ok.any():
            break
        move(rows[ok][(cnt[g] - cnt[f])[ids[rows[ok]]].sum(1).argmax()], g, f)
    return fold


def cross_validate(scheme, probs, labels, num_classes, method="mean", per_attribute=False, folds: int = 5,
                   seed: int = 0) -> tuple[dict, np.ndarray]:
    """Weights fitted on k-1 stratified folds of val, applied to the held-out fold: score and out-of-fold
    probabilities."""
    oof = np.zeros_like(probs[0])
    fold = stratified_folds(labels, folds, seed)
    for f in range(folds):
        train_idx, test_idx = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        w = get_weights(scheme, [p[train_idx] for p in probs], labels[train_idx], num_classes, method,
                        per_attribute, seed)
        oof[test_idx] = combine([p[test_idx] for p in probs], w, num_classes, method)
    return score(labels, probs_to_pred(oof, num_classes), num_classes), oof


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


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.ensemble", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--runs", help="comma-separated run names (or run/model labels); default all")
    p.add_argument("--models", help="comma-separated model names; default all")
    p.add_argument("--tta", default="plain,flip", help="views averaged per member: plain,flip,cropF,cropF+flip")
    p.add_argument("--combine", default="mean", choices=["mean", "geometric"])
    p.add_argument("--weights", default="caruana", choices=WEIGHTINGS)
    p.add_argument("--per-attribute", action="store_true", help="separate weights for each attribute")
    p.add_argument("--folds", type=int, default=5, help="stratified CV folds over val for fitted weights")
    p.add_argument("--data", help="dataset root, if it moved since training (for recomputing TTA views)")
    p.add_argument("--name", default="ensemble", help="name of the ensemble entry on the leaderboard")
    p.add_argument("--out", default="submission", help="folder for prediction.txt and prediction.zip")
    p.add_argument("--force", action="store_true", help="overwrite an existing prediction file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-report", action="store_true", help="skip rebuilding the runs folder's leaderboard")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    split_list = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    views = split_list(a.tta)
    try:
        check_out(Path(a.out), a.force)  # before loading anything: a refusal at the end would waste the work
        members = [m for m in find_runs(a.runs_dir, split_list(a.runs), split_list(a.models), done_only=True)
                   if m.meta.get("kind", "model") == "model"]
        check_members(members)
        from bench.trainer import pick_device
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
    if a.weights != "uniform" and len(labels) >= 2 * a.folds:
        cv, honest = cross_validate(a.weights, probs, labels, nc, a.combine, a.per_attribute, a.folds, a.seed)
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
    if not a.no_report:
        from bench.report import build_report
        build_report(a.runs_dir)
    return result


if __name__ == "__main__":
    main()
