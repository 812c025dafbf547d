"""Combine trained models into one prediction file, with an honest estimate of the gain (library of bench.ensemble).

Members are the finished runs under runs/. Each member's probabilities are averaged over TTA views (`plain`, `flip`
are stored by training; others, e.g. `crop0.9` or `crop0.9+flip`, are computed from the member's best.pt once and
cached in its folder as tta_<split>.npz). Members are combined per attribute by arithmetic or geometric mean, with
uniform weights, weights fitted on val (log-loss), or Caruana et al.'s ensemble selection (ICML 2004: forward
selection with replacement, sorted initialisation, bagging, each bag keeping its best-scoring ensemble size),
optionally per attribute. Fitted weights are also scored by k-fold cross-validation over val images (folds stratified
over all attributes), and the leaderboard entry then holds those out-of-fold val probabilities. Only the weights
are cross-fitted: the members' epochs (and any tuned parameters) were chosen on the same val images, so the
ensemble's val score stays optimistic. Without CV (uniform weights, or fewer than 2 x folds val images) the entry is
in-sample; run.json's `val_scoring` says which, and the leaderboard shows it.
Checks first that OUT holds no prediction yet (--force overwrites), then writes OUT/prediction.txt (test.txt order,
one int per attribute per line, validated first) and OUT/prediction.zip, both atomically, with the txt's provenance
file (its split and test images, bench/data/predictions.py; a CSV dataset gets OUT/prediction.csv), and an entry
RUNS/_ensembles/<name>/ that the leaderboard report (rebuilt in RUNS' report folder) picks up.
"""
from __future__ import annotations

import os
import time
import uuid
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bench.artifacts import ArtifactError, RunArtifacts, find_runs, load_cache, save_cache, save_probs, write_run
from bench.data import (DatasetError, attributes_of, class_counts, format_prediction_csv, format_predictions,
                        open_dataset, provenance_path, provenance_text, read_prediction_csv, read_predictions,
                        reopen_args)
from bench.data.demo import hidden_test_labels
from bench.data.folds import stratified_folds
from bench.replicas import matches as replica_matches, selected_sets, set_name
from bench.ensembling.combiners import COMBINERS, combine
from bench.ensembling.decisions import DECISIONS, decide, fit_rule, prior_from_counts
from bench.ensembling.views import parse_view
from bench.ensembling.weightings import WEIGHTINGS
from bench.metrics import TARGETS, format_score, score

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
    names = {attributes_of(m.meta) for m in members}
    if len(names) > 1:
        raise EnsembleError(f"members disagree on attribute names {sorted(names)}")
    scored = {}
    for m in members:
        scored.setdefault(scored_on(m.meta), []).append(m.label)
    if len(scored) > 1:
        groups = "; ".join(f"{k}: {', '.join(v)}" for k, v in scored.items())
        raise EnsembleError(f"members were scored on different images ({groups}): k-fold members (out-of-fold over "
                            f"train + val) combine only with k-fold members of the same folds (same --folds, "
                            f"--fold-seed and data), others only with each other; choose with --runs/--models")


def check_names(runs_dir: Path, runs: list[str] | None, models: list[str] | None) -> None:
    """Each name given to --runs / --models names a finished model run, else EnsembleError naming it and listing the
    finished ones (a mistyped name dropped its member silently, or ended in 'no finished runs found')."""
    arts = [m for m in find_runs(runs_dir, done_only=True) if m.meta.get("kind", "model") == "model"]
    done = sorted(m.label for m in arts)
    sets = [(set_name(m.dir, m.meta), m.meta["replica"]["of"]) for m in arts if set_name(m.dir, m.meta)]
    known = {"--runs": {*done, *(d.split("/")[0] for d in done), *(s for s, _ in sets)},  # a replica set: its seeds
             "--models": {*(d.split("/")[1] for d in done), *(of for _, of in sets)}}
    for flag, names in (("--runs", runs), ("--models", models)):
        unknown = [n for n in names or () if n not in known[flag]]
        if unknown and not done:
            raise EnsembleError(f"{flag} {','.join(unknown)}: {runs_dir} holds no finished runs; train some first: "
                                f"python -m bench.run --models resnet18,effb3")
        if unknown:
            raise EnsembleError(f"{flag} {','.join(unknown)}: not among the finished runs in {runs_dir} (run/model): "
                                f"{', '.join(done)}")


def scored_on(meta: dict) -> str:
    """The images a member's val probabilities cover: `val`, or a k-fold partition of train + val."""
    return meta.get("scored_on", "val")


def member_views(member: RunArtifacts, views: list[str], data_root, device,
                 splits=("val", "test")) -> dict[str, dict[str, np.ndarray]]:
    """Per split: stored probabilities (plain, flip, labels) plus cached or freshly computed TTA views.

    Each split's cached views are keyed to the checkpoint that produced that split's stored probabilities
    (RunArtifacts.checkpoint: best.pt, or a refit member's refit/best.pt for test), by its path, size and
    modification time: views of other weights (before `bench.run --force`, or the val-run model after `--refit`)
    are never averaged in, they are recomputed from the right weights."""
    have = {}
    for split in splits:
        stored = member.load_probs(split) if member.has_probs(split) else {}
        cache_path = member.dir / f"tta_{split}.npz"
        cached = load_cache(cache_path) or {}  # a cache that differs from its digest is recomputed
        if str(cached.pop("checkpoint", "")) != checkpoint_key(member, split):
            cached = {}  # computed from other weights (or by a version that did not record them): stale
        have[split] = {**cached, **stored}
    missing = {s: [v for v in views if v not in have[s]] for s in splits}
    missing = {s: v for s, v in missing.items() if v}
    if missing and (member.meta.get("kfold") or member.meta.get("crossfit")):
        raise EnsembleError(f"{member.label} is a k-fold member: its probabilities come from several models, so only "
                            f"the stored views plain and flip exist (asked for {missing})")
    if missing:
        print(f"  {member.label}: computing TTA views {missing} from "
              + ", ".join(f"{s}: {member.checkpoint(s).relative_to(member.dir)}" for s in missing))
        from bench.ensembling.tta import compute_views  # torch loads only when a view must be computed
        for split, computed in compute_views(member, missing, data_root, device).items():
            have[split].update(computed)
            extra = {k: v for k, v in have[split].items() if k not in (*STORED_VIEWS, "labels")}
            save_cache(member.dir / f"tta_{split}.npz", checkpoint=np.array(checkpoint_key(member, split)), **extra)
    return have


def checkpoint_key(member: RunArtifacts, split: str) -> str:
    """Identity of the weights a split's views come from: that checkpoint's path (relative to the member), size
    and modification time ('' if absent)."""
    ckpt = member.checkpoint(split)
    if not ckpt.exists():
        return ""
    st = ckpt.stat()
    return f"{ckpt.relative_to(member.dir)}-{st.st_size}-{st.st_mtime_ns}"


def member_identity(member: RunArtifacts) -> dict:
    """What an entry records of each member, so that a later reader (bench.distill) can tell a member retrained
    since (`bench.run --force`, a new refit): the checkpoint identity of each split's weights and its finish time."""
    return {"val": checkpoint_key(member, "val"), "test": checkpoint_key(member, "test"),
            "finished": member.meta.get("finished")}


def tta_mean(probs: dict[str, np.ndarray], views: list[str]) -> np.ndarray:
    return np.mean([probs[v] for v in views], axis=0)


def member_probs(member: RunArtifacts, split: str, views: list[str], data_root, device) -> np.ndarray:
    """One split's probabilities averaged over `views`."""
    return tta_mean(member_views(member, views, data_root, device, (split,))[split], views)


@dataclass
class CrossFit:
    """Out-of-fold results over val: every image scored by weights and decision parameters fitted without it."""
    score: dict                 # of `pred`
    probs: np.ndarray           # combined probabilities (weights fitted on the other folds)
    pred: np.ndarray            # decided predictions (rule parameters fitted on the other folds)
    argmax_score: dict          # of plain argmax on `probs`: what the fitted rule adds


def cross_validate(scheme, probs, labels, num_classes, method="mean", per_attribute=False, folds: int = 5,
                   seed: int = 0, decision: str = "argmax", prior=None, metric: str = "overall",
                   fold_ids: np.ndarray | None = None, attributes=None) -> CrossFit:
    """Weights (then the decision rule's parameters, on the combined probabilities of the same training folds)
    fitted on k-1 stratified folds of val and applied to the held-out fold. A single member with `uniform` weights
    cross-fits the decision rule alone. `fold_ids` (k-fold members: their own folds) replaces the stratified
    split; the rule's `prior` is then, per fold, the class frequencies of the other folds (what that fold's models
    trained on), never counts that include the images being scored."""
    oof, pred = np.zeros_like(probs[0]), np.zeros((len(labels), len(num_classes)), np.int64)
    fold = stratified_folds(labels, folds, seed) if fold_ids is None else np.asarray(fold_ids)
    for f in np.unique(fold):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        pi = prior_from_counts(class_counts(labels[tr], num_classes)) if fold_ids is not None else prior
        w = WEIGHTINGS[scheme]([p[tr] for p in probs], labels[tr], num_classes, method, per_attribute, seed, metric)
        params = fit_rule(decision, combine([p[tr] for p in probs], w, num_classes, method), labels[tr], num_classes,
                          pi, metric)
        oof[te] = combine([p[te] for p in probs], w, num_classes, method)
        pred[te] = decide(decision, oof[te], num_classes, pi, params)
    return CrossFit(score(labels, pred, num_classes, attributes), oof, pred,
                    score(labels, decide("argmax", oof, num_classes, prior), num_classes, attributes))


def check_out(out: Path, force: bool) -> None:
    """Refuse an existing submission unless --force (checked before any work, and again before writing)."""
    for f in (out / "prediction.txt", out / "prediction.zip", out / "prediction.csv"):
        if f.exists() and not force:
            raise EnsembleError(f"{f} exists; pass --force to overwrite it or choose another --out")


def write_submission(pred: np.ndarray, out: Path, num_classes, force: bool = False,
                     provenance: dict | None = None) -> tuple[Path, Path]:
    """OUT/prediction.txt and OUT/prediction.zip, never half-written, and beside them the txt's provenance file
    (bench/data/predictions.py: `provenance` holds provenance_text's split, images, dataset and data_root).

    All are written and checked under unique temporary names first; then the old txt is removed, the zip renamed
    into place, then the txt, then the provenance file (renames are atomic). So a prediction.txt always has its own
    zip beside it; a kill mid-way leaves the old pair, or a complete zip (old or new) without txt, never a broken
    file; a provenance file left from an older txt names that txt's sha256, so bench.score calls it unknown.
    """
    check_out(out, force)
    out.mkdir(parents=True, exist_ok=True)
    txt, zpath = out / "prediction.txt", out / "prediction.zip"
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_txt, tmp_zip = out / f".prediction-{tag}.txt.tmp", out / f".prediction-{tag}.zip.tmp"
    tmp_prov = out / f".prediction-{tag}.provenance.tmp"
    try:
        text = format_predictions(pred)
        tmp_txt.write_text(text)
        if provenance is not None:
            tmp_prov.write_text(provenance_text(text, txt.name, written_by="bench.ensemble", **provenance))
        read_predictions(tmp_txt, num_classes, expected_lines=len(pred))  # the scorer's own validator
        with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as z:
            z.write(tmp_txt, "prediction.txt")
        with zipfile.ZipFile(tmp_zip) as z:
            if z.namelist() != ["prediction.txt"] or z.read("prediction.txt") != tmp_txt.read_bytes():
                raise EnsembleError(f"{tmp_zip}: the zip does not read back as written")
        txt.unlink(missing_ok=True)
        os.replace(tmp_zip, zpath)
        os.replace(tmp_txt, txt)
        if provenance is not None:
            os.replace(tmp_prov, provenance_path(txt))
    finally:
        tmp_txt.unlink(missing_ok=True)
        tmp_zip.unlink(missing_ok=True)
        tmp_prov.unlink(missing_ok=True)
    return txt, zpath


def predicted_test_images(meta: dict, root: Path, n: int) -> list[str] | None:
    """The test images the members predicted, in order: the test split of the dataset at `root` reopened as they
    recorded it, when it is still the one they were trained on (fingerprint) and lists `n` images; else None."""
    try:
        ds = open_dataset(root, check_images=False, **reopen_args(meta.get("data_layout")))
        paths = list(ds.splits["test"].paths)
        same = len(paths) == n and ds.fingerprint() == meta["config"]["dataset"]
    except (DatasetError, OSError, KeyError):
        return None
    return paths if same else None


def write_prediction_csv(pred: np.ndarray, out: Path, paths, attributes, class_names, force: bool = False,
                         probs: np.ndarray | None = None) -> Path:
    """A CSV dataset's submission, OUT/prediction.csv: the prediction CSV that bench.predict writes and bench.score
    reads (bench/data/predictions.py: image path, class name and, given `probs`, its probability per attribute),
    written under a unique temporary name, read back with the scorer's reader, then renamed into place."""
    check_out(out, force)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "prediction.csv"
    tmp = out / f".prediction-{os.getpid()}-{uuid.uuid4().hex[:8]}.csv.tmp"
    try:
        tmp.write_text(format_prediction_csv(paths, pred, attributes, class_names, probs))
        back = read_prediction_csv(tmp, attributes, class_names)
        if back.images != list(paths) or not (back.values == pred).all():
            raise EnsembleError(f"{tmp}: the prediction CSV does not read back as written")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@dataclass
class EnsembleSpec:
    """What to ensemble and how: bench.ensemble's options (its --help says what each does)."""
    runs_dir: Path = Path("runs")
    runs: list[str] | None = None        # run names or run/model labels; None: all finished runs
    models: list[str] | None = None      # model names; None: all
    views: list[str] = field(default_factory=lambda: ["plain", "flip"])
    combine: str = "mean"                # combiners.py
    weights: str = "caruana"             # weightings.py
    metric: str = "overall"              # bench.metrics.TARGETS: what weights and decision parameters are fitted for
    decision: str | None = None          # decisions.py; None: logit_adjusted for metric class, else argmax
    per_attribute: bool = False
    folds: int = 5
    data: Path | None = None             # dataset root, if it moved since training
    name: str = "ensemble"
    out: Path = Path("submission")
    force: bool = False
    seed: int = 0


def _fmt_scores(s: dict | None) -> str:
    return "     -        -   " if s is None else f"  {s['overall_acc']:.4f}   {s['class_avg_acc']:.4f}"


def make_ensemble(a: EnsembleSpec, device) -> dict:
    """Prints the members and the ensemble side by side (both challenge metrics, plain argmax vs the fitted decision
    rule, out-of-fold), writes the submission (OUT/prediction.txt and .zip) and the leaderboard entry
    RUNS/_ensembles/NAME/, returns the entry's run.json. Raises EnsembleError, ArtifactError, DatasetError or
    ValueError (an unknown registered name) before writing anything when members or options do not fit."""
    views = list(a.views)
    if a.metric not in TARGETS:
        raise ValueError(f"unknown metric {a.metric!r}; choose one of {', '.join(TARGETS)}")
    rule = a.decision or ("logit_adjusted" if a.metric == "class" else "argmax")
    weighting, _, _ = WEIGHTINGS[a.weights], COMBINERS[a.combine], DECISIONS[rule]  # unknown names fail first
    for v in views:
        parse_view(v)
    check_out(Path(a.out), a.force)  # before loading anything: a refusal at the end would waste the work
    check_names(a.runs_dir, a.runs, a.models)
    members = [m for m in find_runs(a.runs_dir, done_only=True)  # a model name takes its replicas too
               if m.meta.get("kind", "model") == "model" and replica_matches(m, a.runs, a.models)]
    for line in selected_sets(members, a.runs, a.models):
        print(f"[ensemble] {line}")
    check_members(members)
    if len(members) == 1 and a.weights != "uniform":  # one member has nothing to weigh: say "uniform", not "fitted"
        print(f"[ensemble] one member ({members[0].label}): weights {a.weights} -> uniform (nothing to weigh)")
        a = replace(a, weights="uniform")
        weighting = WEIGHTINGS[a.weights]
    nc, attrs = tuple(members[0].meta["num_classes"]), attributes_of(members[0].meta)
    counts = members[0].meta.get("train_class_counts")
    if counts is None and getattr(DECISIONS[rule], "grid", None):
        raise EnsembleError(f"decision rule {rule} needs the training class frequencies, which "
                            f"{members[0].label}'s run.json does not record (retrain it)")
    prior = prior_from_counts(counts) if counts is not None else None
    loaded = {m.label: member_views(m, views, a.data, device) for m in members}
    labels = loaded[members[0].label]["val"].get("labels")
    if labels is None:
        raise EnsembleError("the members' val split has no labels: nothing to fit or score on")
    val = {n: tta_mean(h["val"], views) for n, h in loaded.items()}
    plain = {n: h["val"]["plain"] for n, h in loaded.items()}
    test = {n: tta_mean(h["test"], views) for n, h in loaded.items()}
    names, probs = list(val), list(val.values())
    fitting = a.weights != "uniform" or bool(getattr(DECISIONS[rule], "grid", None))
    member_folds = loaded[members[0].label]["val"].get("fold")  # k-fold members: CV over their own folds
    n_folds = len(np.unique(member_folds)) if member_folds is not None else a.folds
    cv_ok = fitting and len(labels) >= 2 * n_folds

    def argmax_score(p):
        return score(labels, decide("argmax", p, nc, prior), nc, attrs)

    def oof(ps, weights=a.weights):
        return cross_validate(weights, ps, labels, nc, a.combine, a.per_attribute, n_folds, a.seed, rule, prior,
                              a.metric, member_folds, attrs) if cv_ok else None

    member_rows = []
    for name in names:
        cv = oof([val[name]], "uniform") if rule != "argmax" else None
        member_rows.append((name, argmax_score(plain[name]), argmax_score(val[name]), cv))
    weights = weighting(probs, labels, nc, a.combine, a.per_attribute, a.seed, a.metric)
    uniform = argmax_score(combine(probs, np.ones(len(probs)), nc, a.combine))
    in_sample = combine(probs, weights, nc, a.combine)
    params = fit_rule(rule, in_sample, labels, nc, prior, a.metric)
    fitted = score(labels, decide(rule, in_sample, nc, prior, params), nc, attrs)
    cv = oof(probs)
    if cv is not None:
        honest_probs, honest_pred, honest = cv.probs, cv.pred, cv.score
        what = [x for x, fit in (("weights", a.weights != "uniform"),
                                 (f"{rule} rule", bool(getattr(DECISIONS[rule], "grid", None)))) if fit]
        how = "the members' own folds over train + val" if member_folds is not None else "stratified"
        scoring = f"{n_folds}-fold CV ({how}): {' and '.join(what)} fitted out-of-fold for {a.metric}"
    else:  # what the leaderboard shows is then in-sample, and says so
        honest_probs, honest_pred, honest = in_sample, decide(rule, in_sample, nc, prior, params), fitted
        scoring = "in-sample (uniform weights, argmax: nothing fitted)" if not fitting else \
            f"in-sample (too few val images for {n_folds}-fold CV; optimistic)"
    if views == ["plain"]:
        plain_pred, plain_probs = honest_pred, honest_probs
    else:  # the same ensemble on the plain view alone, fitted and scored the same way: the leaderboard compares it
        #   with the members' plain scores, and the TTA ensemble with the members' TTA scores (like with like)
        plain_cv = oof(list(plain.values()))
        if plain_cv is not None:
            plain_pred, plain_probs = plain_cv.pred, plain_cv.probs
        else:
            w_plain = weighting(list(plain.values()), labels, nc, a.combine, a.per_attribute, a.seed, a.metric)
            comb = combine(list(plain.values()), w_plain, nc, a.combine)
            plain_pred, plain_probs = decide(rule, comb, nc, prior, fit_rule(rule, comb, labels, nc, prior,
                                                                             a.metric)), comb
    plain_score = score(labels, plain_pred, nc, attrs)
    adjusted = rule != "argmax"
    where = "val" if member_folds is None else "out-of-fold over train + val (k-fold members)"
    print(f"\nscores on {where} (n={len(labels)}), overall / class-average accuracy; target: {a.metric} "
          f"({TARGETS[a.metric]}); decision rule: {rule}")
    print(f"  {'':<44} {'plain (argmax)':>17}  {'TTA ' + '+'.join(views) + ' (argmax)':>22}"
          + (f"  {rule + ' (out-of-fold)':>24}" if adjusted else ""))
    for name, p_s, t_s, m_cv in member_rows:
        print(f"  {name:<44} {_fmt_scores(p_s)}  {_fmt_scores(t_s):>22}" + (f"  {_fmt_scores(m_cv and m_cv.score):>24}"
                                                                          if adjusted else ""))
    print(f"  {'ensemble, uniform weights':<44} {'':17}  {_fmt_scores(uniform):>22}")
    print(f"  {'ensemble, ' + a.weights + ' weights (in-sample)':<44} {'':17}  {_fmt_scores(argmax_score(in_sample)):>22}"
          + (f"  {_fmt_scores(fitted) + ' in-sample':>24}" if adjusted else ""))
    if cv is not None:
        print(f"  {'ensemble, ' + a.weights + ' weights (out-of-fold)':<44} {'':17}  "
              f"{_fmt_scores(cv.argmax_score):>22}" + (f"  {_fmt_scores(cv.score):>24}" if adjusted else ""))
    if views != ["plain"]:
        print(f"  {'ensemble, plain view only (' + ('out-of-fold' if cv is not None else 'in-sample') + ')':<44} "
              f"{_fmt_scores(plain_score)}   (its {rule} predictions: what the leaderboard compares with the "
              f"members' plain scores)")
    print(f"leaderboard entry scored: {scoring}")
    w_show = weights if weights.ndim == 1 else weights.mean(1)
    print("weights: " + ", ".join(f"{n} {w:.2f}" for n, w in zip(names, w_show)))
    if params:
        print(f"{rule} parameters (fitted on all {'val' if member_folds is None else 'out-of-fold probabilities'} "
              f"(n={len(labels)}), used for the submission): "
              + "; ".join(f"{k} " + " ".join(f"{at} {v:g}" for at, v in zip(attrs, vals))
                          for k, vals in params.items()))
    test_comb = combine(list(test.values()), weights, nc, a.combine)
    pred = decide(rule, test_comb, nc, prior, params)
    layout = members[0].meta.get("data_layout")
    root = Path(a.data or members[0].meta["data_root"])
    test_paths = predicted_test_images(members[0].meta, root, len(pred))
    if reopen_args(layout):  # a CSV dataset: image paths and class names, not the challenge's int lines
        paths = open_dataset(root, check_images=False, **reopen_args(layout)).splits["test"].paths
        if len(paths) != len(pred):
            raise EnsembleError(f"the test split at {root} lists {len(paths)} images, the members predicted "
                                f"{len(pred)}; pass --data")
        txt = write_prediction_csv(pred, Path(a.out), paths, attrs, members[0].meta["class_names"], a.force,
                                   test_comb)
        print(f"wrote {txt} ({len(pred)} images, {rule}; class name and probability per attribute)")
    else:
        prov = {"split": "test", "images": test_paths, "dataset": members[0].meta["config"]["dataset"],
                "data_root": str(root)}
        txt, zpath = write_submission(pred, Path(a.out), nc, a.force, prov)
        print(f"wrote {txt} ({len(pred)} lines, {rule}) and {zpath}"
              + ("" if test_paths else f"; the members' test images could not be listed from {root} (moved or "
                 "changed since training; --data), so its provenance file names the split only"))
    result = {"kind": "ensemble", "status": "done", "name": a.name, "members": names, "views": views,
              "scored_on": scored_on(members[0].meta),
              "combine": a.combine, "weighting": a.weights, "metric": a.metric, "decision": rule,
              "decision_params": params, "per_attribute": a.per_attribute,
              "weights": weights.tolist(), "val": honest, "val_plain_view": plain_score, "val_in_sample": fitted,
              "val_uniform": uniform,
              "val_cv": cv.score if cv is not None else None,
              "val_cv_argmax": cv.argmax_score if cv is not None else None, "val_scoring": scoring,
              "members_val": {n: {"plain": p_s, "tta": t_s, "decided_oof": m_cv.score if m_cv else None}
                              for n, p_s, t_s, m_cv in member_rows},
              "config": {"dataset": members[0].meta["config"]["dataset"]},
              "dataset": members[0].meta["config"]["dataset"],
              "num_classes": list(nc), "attributes": list(attrs), "class_names": members[0].meta["class_names"],
              "train_class_counts": counts,
              "params": sum(m.meta.get("params", 0) for m in members),
              "gflops": round(sum(m.meta.get("gflops", 0) for m in members) * len(views), 3),
              "train_time_s": round(sum(m.meta.get("train_time_s", 0) for m in members), 2),
              "device": members[0].meta.get("device"), "prediction": str(txt),
              "member_identity": {m.label: member_identity(m) for m in members},
              "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        hidden = (hidden_test_labels(root, attrs, members[0].meta["class_names"], test_paths)
                  if test_paths is not None else None)
    except DatasetError as e:  # a demo's hidden labels that do not fit its test split: say so, keep the entry
        hidden = None
        print(f"demo test split not scored: {e.summary(3)}")
    if hidden is not None:  # demo data only: its test labels exist for exactly this
        result["demo_test"] = score(hidden[0], pred, nc, attrs)
        print(format_score(result["demo_test"], f"demo test split (hidden labels, {hidden[1]})",
                           challenge=not reopen_args(layout)))
    edir = Path(a.runs_dir) / "_ensembles" / a.name
    edir.mkdir(parents=True, exist_ok=True)
    # out-of-fold when CV ran (val_scoring); `pred` holds the decided predictions the leaderboard scores
    # `pred` at the ensemble's views, `pred_plain` the same ensemble on the plain view alone
    # plain_view: the combined probabilities behind pred_plain (what the galleries rank its mistakes by)
    save_probs(edir / "probs_val.npz", plain=honest_probs, labels=labels, pred=honest_pred, pred_plain=plain_pred,
               plain_view=plain_probs)
    save_probs(edir / "probs_test.npz", plain=test_comb, pred=pred)
    write_run(result, edir)  # records the digests of the entry's probabilities (bench/artifacts.py verify)
    return result
