"""Leaderboard report rebuilt from run artifacts alone (no retraining); same artifacts, same report (library of
bench.report).

A report belongs to its runs folder: by default a folder named `runs` reports to `reports/` beside it (runs/ ->
reports/), any other RUNS to RUNS/_report/, so training elsewhere never overwrites another leaderboard. Writes
OUT/leaderboard.md, its CSV twin OUT/leaderboard.csv, and figures in OUT/leaderboard_files/ (linked relatively so the
report renders on a code host; figures the new report does not use are deleted). Runs still training, failed runs,
runs without val labels or probabilities, and ensemble entries whose members were retrained or removed since they
were written (bench/ensembling/entries.py's check, the one bench.predict, export and distill make) are listed in
their own section instead of the leaderboard. With nothing to rank it says so on stderr and exits 1.

The answer comes first: one verdict sentence (`verdict`) and a summary table of at most 8 columns
(`render_summary`), then, where an entry is not above the majority baseline or a model from random init gets a
class wholly wrong, a note setting the entries against that baseline (`baseline_note`); every column and the comparisons follow, and the method is a legend after the tables
(`render_legend`). Metric names carry the 2023 / 2024 challenge only for the FashionDataset layout
(`describe_dataset`). Which predictions an entry shows, and at which views, is bench/reporting/predictions.py's.

Every score is on the validation split, which also chose each model's epoch (and any tuned parameters), so it is
optimistic; the report says per entry what its val score is. Significance against the leader: paired sign-flip
permutation test over images, Holm-adjusted over all comparisons with the leader.

Replicas (`bench.run --seeds`, bench/replicas.py): the replicas of one set are one row (`replica_row`): the mean over
seeds of every score, the seed spread (min..max), and an interval counting retraining and images
(bench/stats.py seed_interval). Two such rows are compared over seeds and images (seed_compare); a comparison in
which a row has one seed keeps the image-only test, and where the dataset has replicas the report prints their
measured seed spread beside it. A replica set whose replicas differ in more than the seed is refused (ReplicaError).
"""
from __future__ import annotations

import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.artifacts import ArtifactError, RunArtifacts, atomic_write, find_runs
from bench.data import ATTRIBUTES, attributes_of, class_counts, leaderboard_attribute_columns
from bench.metrics import TARGETS, image_parts, majority_from_counts, metric_name, score
from bench.replicas import ReplicaError, check_set, group, seed_of
from bench.reporting.predictions import Shown, shown
from bench.stats import (bootstrap_ci, format_p, holm, image_diff, paired_bootstrap, results_cache, seed_compare,
                         seed_interval, sign_flip_p)
from bench.training.precision import device_label  # the device and the precision it ran in (no torch)

SORT_KEYS = ("overall_acc", "class_avg_acc", "mean_class_acc", "macro_f1")
N_PERM = 10000  # random sign flips per comparison with the leader


@dataclass
class Entry:
    """One leaderboard row. `shown` holds its columns of predictions as bench/reporting/predictions.py decides them
    (the one place that does; the galleries draw from it too): `pred` is its main column, the plain view (no
    test-time augmentation: a model's plain probabilities, an ensemble of its members' plain probabilities), `views`
    its views; `tta_pred` the entry at its declared views (a model: plain + flip; an ensemble: its --tta views; an
    ensemble with one column: that column), None for a model without flip probabilities. Rows are compared column with column, so no entry's TTA score meets another's
    plain score. The baseline has no `shown`. A row of replicas (`replica_row`) holds its seeds' entries in
    `replicas`: its score is their mean, and its pred, shown and extra are its first seed's (its confusion matrix
    and galleries are drawn from that seed, and say so)."""
    label: str
    kind: str
    meta: dict
    pred: np.ndarray
    correct: np.ndarray
    score: dict
    tta_pred: np.ndarray | None = None
    tta_views: str = "-"
    history: pd.DataFrame | None = None
    extra: dict = field(default_factory=dict)
    views: str = "plain"
    shown: Shown | None = None
    replicas: list[Entry] = field(default_factory=list)


def runs_of(e: Entry) -> list[Entry]:
    """The entries behind a row: its replicas, or the row itself."""
    return e.replicas or [e]


def labelled(entries: list[Entry]) -> dict[str, Entry]:
    """label -> entry for the rows and, of each row of replicas, its replicas (an ensemble names them as members)."""
    return {**{r.label: r for e in entries for r in e.replicas}, **{e.label: e for e in entries}}


def column_preds(e: Entry, tta: bool = False) -> list[np.ndarray] | None:
    """The predictions of a row's column, one array per replica (one for a single run): its main column, or
    (`tta`) its declared views (the baseline's constant prediction has no views to add; None: no such column)."""
    if tta and e.kind == "baseline":
        return [e.pred]
    preds = [r.tta_pred if tta else r.pred for r in runs_of(e)]
    return None if any(p is None for p in preds) else preds


def mean_score(scores: list[dict]) -> dict:
    """The mean over replicas of score dicts (bench.metrics.score), key by key; a class absent from the labels
    (None) stays None."""
    def mean(values):
        if isinstance(values[0], dict):
            return {k: mean([v[k] for v in values]) for k in values[0]}
        if isinstance(values[0], list):
            return [mean([v[i] for v in values]) for i in range(len(values[0]))]
        if values[0] is None:
            return None
        return float(np.mean(values)) if isinstance(values[0], float) else values[0]
    return mean(scores)


def replica_row(name: str, reps: list[Entry]) -> Entry:
    """One row for the replicas of set `name` (in seed order): every score the mean over seeds; GFLOPs one
    model's; train time the mean of one replica's (each row is the cost of training that model once)."""
    first = reps[0]
    seeds = [seed_of(r.meta) for r in reps]
    meta = {**first.meta, "seeds": seeds}
    for key, how in (("train_time_s", np.mean), ("img_per_s", np.median)):
        values = [r.meta.get(key) for r in reps]
        meta[key] = round(float(how(values)), 2) if all(v is not None for v in values) else None
    tta = all(r.tta_pred is not None for r in reps)
    return Entry(f"{name} (seeds {','.join(map(str, seeds))})", first.kind, meta, first.pred, first.correct,
                 mean_score([r.score for r in reps]), first.tta_pred if tta else None,
                 first.tta_views if tta else "-", first.history, first.extra, first.views, first.shown, list(reps))


def merge_replicas(entries: list[Entry]) -> list[Entry]:
    """The entries with each replica set of two or more replicas as one row (replica_row), in place of the first."""
    sets, _ = group(entries, key=lambda e: (e.extra["dir"], e.meta))
    rows = {id(reps[0]): replica_row(name, reps) for name, reps in sets.items() if len(reps) > 1}
    merged = {id(r) for reps in sets.values() if len(reps) > 1 for r in reps}
    return [rows.get(id(e), e) for e in entries if id(e) in rows or id(e) not in merged]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def init_label(meta: dict) -> str:
    init = meta.get("init") or {}
    kind = init.get("init", "-")
    if kind == "imagenet":
        return "ImageNet"
    if kind == "file":
        return "file"
    if kind == "scratch":
        return "scratch (no weights found)" if init.get("source") == "auto-fallback" else "scratch"
    return kind


def report_dir(runs_dir: str | Path) -> Path:
    """Default report folder of a runs folder: `<parent>/reports` for a folder named `runs`, else `RUNS/_report`."""
    runs_dir = Path(runs_dir)
    return runs_dir.parent / "reports" if runs_dir.name == "runs" else runs_dir / "_report"


def val_scoring(e: Entry, others: dict[str, Entry] | None = None) -> str:
    """How far the scored images already shaped an entry, i.e. what its score is. An ensemble's members are looked
    up in `others` (label -> entry); a member not found there counts as selected on val."""
    if e.kind == "baseline":
        return e.meta.get("val_scoring", "unbiased (fit on train counts only)")
    if e.kind == "ensemble":
        members = [(others or {}).get(label) for label in e.meta.get("members", [])]
        chose_nothing = bool(members) and all(m is not None and "optimistic" not in val_scoring(m) for m in members)
        return f"{e.meta.get('val_scoring', 'not recorded (older entry)')}; " + \
            ("members kept their last epoch (chose nothing on these images)" if chose_nothing
             else "members selected on val (optimistic)")
    last = e.meta.get("config", {}).get("recipe", {}).get("select") == "last"
    tuned = bool(e.meta.get("from_study"))
    if "kfold" in e.meta:
        kf = e.meta["kfold"]
        head = f"out-of-fold ({kf['k']} folds over train + val): "
        if kf.get("oof_optimistic"):
            return head + "epoch selected on the predicted fold" + \
                ("; tuned params selected on val, whose images are in the pool" if tuned else "") + " (optimistic)"
        if tuned:
            return head + "last epoch; tuned params selected on val, whose images are in the pool (optimistic)"
        return head + "last epoch, no image predicted by a model that saw or selected on it"
    if tuned:
        text = f"{'last epoch; ' if last else 'epoch and '}tuned params selected on val (optimistic)"
    else:
        text = "last epoch (val chose nothing)" if last else "epoch selected on val (optimistic)"
    if "refit" in e.meta:
        text += f"; test predictions from a refit on train + val ({e.meta['refit']['epochs']} epochs)"
    if "distill" in e.meta:  # bench.distill's student: its teacher and what of it was chosen on val or saw test
        text += "; " + e.meta["distill"].get("provenance", f"distilled from `{e.meta['distill'].get('teacher')}`")
    return text


OPTIMISTIC = " (optimistic)"
# the summary table's *score is* tags (score_tag) and what each means; the legend explains the ones a report uses
SCORE_TAGS = {
    "last epoch": "the recipe kept its last epoch, so these images chose nothing",
    "epoch picked on val": "these images chose the epoch (checkpoint selection)",
    "tuned on val": "these images chose the tuned parameters (bench.tune)",
    "out-of-fold": "k-fold: every image scored by a model that did not train on it",
    "ensemble, cross-fitted": "its weights / decision rule fitted out-of-fold over these images",
    "ensemble, nothing fitted": "uniform weights and argmax: the ensemble itself chose nothing here",
    "ensemble, fitted on val": "its weights or decision rule fitted on these same images",
    "ensemble, not recorded": "an entry too old to record how it was scored",
    "train counts": "each attribute's most frequent training class; these images chose nothing",
    "other folds' counts": "each attribute's most frequent class in the other folds",
    "pool counts": "each attribute's most frequent class in a pool that holds these images",
    OPTIMISTIC.strip(): "the scored images chose something about the entry (its epoch, parameters, weights or "
                        "rule, or its members' epochs), so the score flatters it; *val score is* below says what",
}


def score_tag(e: Entry, others: dict[str, Entry] | None = None) -> str:
    """val_scoring in a few words for the summary table (SCORE_TAGS explains each), ending in " (optimistic)"
    exactly where val_scoring says the scored images shaped the entry."""
    text = val_scoring(e, others)
    optimistic = "optimis" in text  # "(optimistic)", or a distilled student that "inherits that optimism"
    if e.kind == "baseline":
        fold = "other folds" in text
        tag = "other folds' counts" if fold else "train counts" if text.startswith("unbiased") else "pool counts"
        optimistic = tag == "pool counts"
    elif e.kind == "ensemble":
        own = e.meta.get("val_scoring")
        tag = "ensemble, " + ("not recorded" if own is None else "cross-fitted" if re.match(r"\d+-fold CV", own)
                              else "nothing fitted" if "nothing fitted" in own else "fitted on val")
    elif "kfold" in e.meta:
        tag = "out-of-fold"
    elif e.meta.get("from_study"):
        tag = "tuned on val"
    else:
        tag = "last epoch" if text.startswith("last epoch") else "epoch picked on val"
    return tag + (OPTIMISTIC if optimistic else "")


def collect(runs_dir: Path, dataset: str | None = None):
    """Entries for the leaderboard plus notes on everything left out, for one dataset fingerprint."""
    arts = find_runs(runs_dir)
    notes, usable = [], []  # usable: (artifacts, val probabilities)
    for art in arts:
        m = art.meta
        if m.get("status") == "training":
            hist = art.dir / "history.csv"
            done = len(pd.read_csv(hist)) if hist.exists() else 0
            notes.append(f"`{art.label}`: still training ({done}/{m['config']['recipe']['epochs']} epochs done)")
        elif m.get("status") == "failed":
            notes.append(f"`{art.label}`: failed: {m.get('error', 'unknown error')}")
        elif not art.has_probs("val"):
            notes.append(f"`{art.label}`: no val probabilities ({art.probs_path('val')} missing)")
        else:
            try:
                probs = art.load_probs("val")  # verified against the digest its run.json recorded
            except ArtifactError as e:
                notes.append(f"`{art.label}`: left out: {e}")
                continue
            if "labels" not in probs:
                notes.append(f"`{art.label}`: its val split has no labels, nothing to score")
            else:
                usable.append((art, probs))
    stale = {a.label: why for a, _ in usable if (why := stale_ensemble(runs_dir, a))}
    notes += stale.values()
    usable = [(a, p) for a, p in usable if a.label not in stale]
    for name, items in group(usable, key=lambda ap: (ap[0].dir, ap[0].meta))[0].items():
        check_set(name, [(a.dir, a.meta) for a, _ in items])  # ReplicaError: they differ in more than the seed
    fingerprint = lambda a: a.meta.get("dataset") or a.meta["config"]["dataset"]  # noqa: E731
    fps = Counter(fingerprint(a) for a, _ in usable)
    if not fps:
        return [], notes, None
    chosen = dataset or fps.most_common(1)[0][0]
    for fp, n in fps.items():
        if fp != chosen:
            notes.append(f"{n} run(s) trained on another dataset (fingerprint `{fp}`): `--dataset {fp}` reports them")
    entries = merge_replicas([make_entry(a, p) for a, p in usable if fingerprint(a) == chosen])
    for key, members in groups(entries).items():  # a majority baseline on each set of scored images
        if (baseline := majority_baseline(key, members)) is not None:
            entries.append(baseline)
    return entries, notes, chosen


def stale_ensemble(runs_dir: Path, art: RunArtifacts) -> str | None:
    """Why an ensemble entry is not ranked: a member is gone or was retrained after the entry was written, so its
    stored predictions are of models that no longer exist (the check bench.predict, bench.export and bench.distill
    make: bench/ensembling/entries.py read_entry); None for a usable entry or a model."""
    if art.meta.get("kind") != "ensemble":
        return None
    from bench.ensembling.ensemble import EnsembleError  # imports torch: only where there are ensembles
    from bench.ensembling.entries import read_entry
    try:
        read_entry(runs_dir, art.dir.name)
    except EnsembleError as e:
        return f"`{art.label}`: not ranked: {e}"
    return None


def majority_baseline(key: str, group: list[Entry]) -> Entry | None:
    """Each attribute's most frequent class, fitted on images the scored ones are not among: on val, the training
    counts the members recorded; out of fold, per fold the counts of the other folds (the pool's counts would
    include the images being scored). Labelled by the images it scores, so two baselines never share a name. None
    when a val group's members recorded no training counts."""
    base = group[0]
    labels = base.extra["labels"]
    fold = next((e.extra["fold"] for e in group if "fold" in e.extra), None)
    nc = tuple(base.meta["num_classes"])
    meta = {"num_classes": list(nc), "attributes": list(attributes_of(base.meta)), "scored_on": key}
    if fold is None:
        counts = next((e.meta["train_class_counts"] for e in group if "train_class_counts" in e.meta), None)
        if counts is None:
            return None
        meta["val_scoring"] = "unbiased (fit on train counts only)" if key == "val" else \
            "fit on the pool's counts, which include the images it scores (no fold ids recorded)"
        pred = majority_from_counts(counts, len(labels))
        label = "majority baseline" if key == "val" else f"majority baseline ({key})"
    else:
        pred = np.empty_like(labels)
        for f in np.unique(fold):
            rows = fold == f
            pred[rows] = majority_from_counts(class_counts(labels[~rows], nc), int(rows.sum()))
        meta["val_scoring"] = "out-of-fold (fit per fold on the other folds' counts)"
        label = f"majority baseline ({key})"
    return Entry(label, "baseline", meta, pred, pred == labels, score(labels, pred, nc, meta["attributes"]))


def groups(entries: list[Entry]) -> dict[str, list[Entry]]:
    """Entries by the images they are scored on: `val` first, then each k-fold partition of train + val. Only
    entries scored on the same images are ranked and compared together."""
    out: dict[str, list[Entry]] = {}
    for e in sorted(entries, key=lambda e: e.meta.get("scored_on", "val") != "val"):
        out.setdefault(e.meta.get("scored_on", "val"), []).append(e)
    return out


def describe_group(key: str, entries: list[Entry]) -> str:
    n = len(next(e for e in entries if "labels" in e.extra).extra["labels"])
    if key == "val":
        return f"validation split (n = {n} images)"
    k = next((e.meta["kfold"]["k"] for e in entries if "kfold" in e.meta), "?")
    return f"out-of-fold over train + val, {k} folds `{key}` (n = {n} images)"


def missing_note(entries: list[Entry], attributes) -> list[str]:
    """A line counting the missing labels (-1) of the scored images, per attribute; none when every cell is
    labelled."""
    labels = next(e for e in entries if "labels" in e.extra).extra["labels"]
    missing = (labels < 0).sum(0)
    if not missing.any():
        return []
    per = ", ".join(f"{a} {int(m)}" for a, m in zip(attributes, missing) if m)
    return [f"Missing labels: {int(missing.sum())} of the {labels.size} (image, attribute) cells of these images "
            f"({per}); they count in no metric (overall accuracy is correct / labelled cells).", ""]


FEW_IMAGES = 10  # a class with fewer labelled images than this makes the class average's bootstrap intervals too narrow


def few_images_note(entries: list[Entry], class_names, attributes, below: int = FEW_IMAGES) -> list[str]:
    """A line naming the classes with fewer than `below` labelled images among the scored images, and what that
    does to the class average's intervals; none when every class has enough. A bootstrap resample draws a rare
    class's images only from its few images (e.g. 3 that one model gets all right, another all wrong: every
    resample keeps the whole gap), so the interval treats its accuracy as nearly known; the sign-flip test weighs
    each of those images and does not."""
    labels = next(e for e in entries if "labels" in e.extra).extra["labels"]
    counts = class_counts(labels, [len(names) for names in class_names])
    few = [(f"{class_names[a][c]} ({attributes[a]})", int(n))
           for a, per_class in enumerate(counts) for c, n in enumerate(per_class) if 0 < n < below]
    if not few:
        return []
    return [f"Classes with fewer than {below} labelled images here: "
            + ", ".join(f"{name} {n}" for name, n in sorted(few, key=lambda x: (x[1], x[0])))
            + ". The class average moves by 1 / (classes x n) per image of such a class, and a bootstrap resample "
              "draws that class only from those few images, so the class-average intervals (scores and Δ) "
              "understate the uncertainty. Where a Δ interval excludes 0 but the sign-flip p is >= 0.05, the "
              "comparison says so: trust p there.", ""]


def make_entry(art: RunArtifacts, probs: dict) -> Entry:
    """The entry of a run or ensemble folder; which predictions it shows in which column is decided by
    bench/reporting/predictions.py (also read by the galleries and scripts/distill_table.py)."""
    nc = tuple(art.meta["num_classes"])
    labels = probs["labels"]
    kind = art.meta.get("kind", "model")
    columns = shown(kind, art.meta, probs)
    pred, tta = columns.main.pred, columns.tta
    hist_path = art.dir / "history.csv"
    history = pd.read_csv(hist_path) if hist_path.exists() else None
    extra = {"labels": labels, "dir": art.dir, **({"fold": probs["fold"]} if "fold" in probs else {})}
    return Entry(art.label, kind, art.meta, pred, pred == labels, score(labels, pred, nc, attributes_of(art.meta)),
                 tta.pred if tta else None, tta.views if tta else "-",
                 history, extra, columns.main.views, columns)


SEEDS_TEST, IMAGES_TEST = "seeds+images", "images"  # what a comparison counts (column `tested_over`)


def seed_parts(labels, preds: list[np.ndarray], nc, metric: str) -> tuple[list[float], np.ndarray, np.ndarray]:
    """A row's per-replica scores on `metric`, their per-image parts num (S, N, G) and the den they share: the
    metric of the replicas' mean num is the mean of their scores (bench/stats.py)."""
    values = [score(labels, p, nc)[TARGETS[metric]] for p in preds]
    parts = [image_parts(labels, p == labels, nc, metric) for p in preds]
    return values, np.stack([n for n, _ in parts]), parts[0][1]


def compare_with_leader(preds: dict[str, list[np.ndarray] | None], labels, nc, metric: str) -> dict:
    """The leader on `metric` among the rows (label -> predictions, one array per replica; None: not in this
    comparison), and every other one against it on the same images, Holm-adjusted over the family. When both rows
    have two or more replicas, over seeds and images (bench/stats.py seed_compare: t interval and p; test
    `seeds+images`); otherwise over images alone, each row's per-image parts averaged over its replicas (paired
    bootstrap interval and sign-flip p; test `images`: retraining noise not counted). {"leader": label, label:
    {delta, delta_lo, delta_hi, p_sign_flip, p_seeds, p_value (the one used), tested_over, p_holm}}; the leader's
    row has delta 0."""
    scored = sorted(lab for lab, p in preds.items() if p is not None)
    if not scored:
        return {"leader": None}
    parts = {lab: seed_parts(labels, preds[lab], nc, metric) for lab in scored}
    value = {lab: float(np.mean(parts[lab][0])) for lab in scored}
    num, den = {lab: parts[lab][1].mean(0) for lab in scored}, parts[scored[0]][2]  # a row's mean over replicas
    leader = min(scored, key=lambda lab: (-value[lab], lab))
    others = [lab for lab in scored if lab != leader]
    seeded = {o for o in others if len(preds[o]) > 1 and len(preds[leader]) > 1}
    images = [o for o in others if o not in seeded]
    # the image-only tests share their sign flips (each p as if tested alone)
    flips = dict(zip(images, sign_flip_p(np.stack([image_diff(num[o], num[leader], den) for o in images]), N_PERM)
                     if images else []))
    out = {"leader": leader, leader: dict(delta=0.0, delta_lo=None, delta_hi=None, p_sign_flip=None, p_seeds=None,
                                          p_value=None, tested_over=None, p_holm=None)}
    for o in others:
        if o in seeded:
            sc = seed_compare(parts[o][0], parts[leader][0], parts[o][1], parts[leader][1], den)
            out[o] = dict(delta=sc["delta"], delta_lo=sc["lo"], delta_hi=sc["hi"], p_sign_flip=None,
                          p_seeds=sc["p"], p_value=sc["p"], tested_over=SEEDS_TEST)
        else:
            pb = paired_bootstrap(num[o], num[leader], den=den)
            out[o] = dict(delta=pb["delta"], delta_lo=pb["lo"], delta_hi=pb["hi"], p_sign_flip=float(flips[o]),
                          p_seeds=None, p_value=float(flips[o]), tested_over=IMAGES_TEST)
    # one family of tests, every row against the leader: Holm keeps the chance of any false "yes" at 5% for tests
    # fixed in advance; picking the leader on these images adds to it (the legend says so)
    for o, ph in zip(others, holm([out[o]["p_value"] for o in others])):
        out[o]["p_holm"] = float(ph)
    return out


def leaderboard_frame(entries: list[Entry], sort: str = "overall_acc", metric: str = "overall") -> pd.DataFrame:
    """One row per entry, sorted by `sort`; intervals for both challenge metrics; every entry compared with the
    leader on the target `metric` (the leader is the best entry on it), on the plain view and, separately, at each
    entry's declared TTA views (columns tta_*)."""
    entries = sorted(entries, key=lambda e: (-e.score[sort], e.label))
    base = next(e for e in entries if "labels" in e.extra)  # the baseline carries none; all share the val labels
    labels, nc, attributes = base.extra["labels"], tuple(base.meta["num_classes"]), attributes_of(base.meta)
    plain = compare_with_leader({e.label: column_preds(e) for e in entries}, labels, nc, metric)
    # TTA: each entry at its declared views; the baseline's constant prediction has no views to add
    tta = compare_with_leader({e.label: column_preds(e, tta=True) for e in entries}, labels, nc, metric)
    rows, columns = [], None
    by_label = labelled(entries)
    for rank, e in enumerate(entries, 1):
        m, s = e.meta, e.score
        (lo, hi, spread), (clo, chi, cspread) = (row_interval(e, labels, nc, key) for key in ("overall", "class"))
        ts = mean_score([score(labels, p, nc, attributes) for p in column_preds(e, tta=True)]) \
            if e.tta_pred is not None and e.kind != "baseline" else None
        row = {"rank": rank, "entry": e.label, "kind": e.kind, "init": init_label(m) if e.kind == "model" else "-",
               "val_scoring": val_scoring(e, by_label), "decision": decision_label(e), "views": e.views,
               "overall_acc": s["overall_acc"], "ci_lo": lo, "ci_hi": hi,
               "class_avg_acc": s["class_avg_acc"], "class_ci_lo": clo, "class_ci_hi": chi,
               "seeds": len(runs_of(e)) if e.kind == "model" else None,
               "seed_list": ",".join(map(str, m["seeds"])) if e.replicas else None,
               **{f"{k}_{stat}": spread.get(stat) if k == "overall" else cspread.get(stat)
                  for k in ("overall", "class") for stat in ("seed_min", "seed_max", "seed_sd")},
               "tta_views": e.tta_views if ts else "-", "tta_overall_acc": ts["overall_acc"] if ts else None,
               "tta_class_avg_acc": ts["class_avg_acc"] if ts else None,
               "mean_class_acc": s["mean_class_acc"], "macro_f1": s["macro_f1"],
               "params_M": round(m["params"] / 1e6, 2) if "params" in m else None, "gflops": m.get("gflops"),
               "train_time_s": m.get("train_time_s"), "img_per_s": m.get("img_per_s"), "device": device_label(m),
               "leader": e.label == plain["leader"], "n": len(labels), "scored_on": e.meta.get("scored_on", "val"),
               **plain[e.label], "tta_leader": e.label == tta["leader"],
               **{f"tta_{k}": v for k, v in tta.get(e.label, dict.fromkeys(plain[e.label])).items()}}
        # an attribute's accuracy column is its name, or acc_<name> where the row has a column of that name
        # already (a CSV dataset may call an attribute `n`, `rank` or `device`); bench/data/columns.py owns the rule
        # and refuses a clash (attributes `n` and `acc_n`) rather than overwrite a column
        columns = columns or leaderboard_attribute_columns(attributes, row)
        row.update({columns[a]: s["attr_acc"][a] for a in attributes})
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["attribute_columns"] = columns or {a: a for a in attributes}
    return df


def row_interval(e: Entry, labels, nc, metric: str) -> tuple[float, float, dict]:
    """A row's 95% interval on `metric` and its seed spread: over images (bootstrap_ci) for one run, {}; over seeds
    and images (bench/stats.py seed_interval) for a row of replicas, {seed_min, seed_max, seed_sd}."""
    preds = column_preds(e)
    if len(preds) == 1:
        num, den = image_parts(labels, e.correct, nc, metric)
        return (*bootstrap_ci(num, den=den), {})
    values, nums, den = seed_parts(labels, preds, nc, metric)
    si = seed_interval(values, nums, den)
    return si["lo"], si["hi"], {"seed_min": si["min"], "seed_max": si["max"], "seed_sd": si["sd"]}


def decision_label(e: Entry) -> str:
    """How an entry's probabilities became predictions: argmax, or a fitted rule with its per-attribute values."""
    rule = e.meta.get("decision", "argmax") if e.kind == "ensemble" else ("-" if e.kind == "baseline" else "argmax")
    params = e.meta.get("decision_params") or {}
    return rule + "".join(f" ({k} {' '.join(f'{v:g}' for v in vals)})" for k, vals in params.items())


def _fmt(v, spec=".4f", empty="-"):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return empty
    return format(v, spec) if isinstance(v, (int, float, np.floating)) else str(v)


def markdown_table(df: pd.DataFrame, columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    sep = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(str(row[c]) for c, _ in columns) + " |" for _, row in df.iterrows()]
    return "\n".join([head, sep, *body])


def render_leaderboard(df: pd.DataFrame, attributes, data: Dataset | None = None) -> str:
    """Every column of one set of scored images (the CSV holds them all too)."""
    data = data or Dataset(True, "")
    view = pd.DataFrame({
        "rank": df["rank"], "entry": "`" + df["entry"] + "`", "init": df["init"], "scoring": df["val_scoring"],
        "n": df["n"],
        "overall": [f"**{_fmt(a)}** [{_fmt(lo, '.3f')}, {_fmt(hi, '.3f')}]" + _spread(r, "overall_acc")
                    for (_, r), a, lo, hi in zip(df.iterrows(), df["overall_acc"], df["ci_lo"], df["ci_hi"])],
        "seeds": [_seeds_cell(r) for _, r in df.iterrows()],
        "views": df["views"], "tta_views": df["tta_views"], "decision": df["decision"],
        "tta": df["tta_overall_acc"].map(_fmt), "tta_cavg": df["tta_class_avg_acc"].map(_fmt),
        "cavg": [f"**{_fmt(a)}** [{_fmt(lo, '.3f')}, {_fmt(hi, '.3f')}]" + _spread(r, "class_avg_acc")
                 for (_, r), a, lo, hi in zip(df.iterrows(), df["class_avg_acc"], df["class_ci_lo"],
                                              df["class_ci_hi"])],
        "mca": df["mean_class_acc"].map(_fmt),
        "f1": df["macro_f1"].map(_fmt),
        **{f"attr:{a}": df[df.attrs["attribute_columns"][a]].map(lambda v: _fmt(v, ".3f")) for a in attributes},
        "params": df["params_M"].map(lambda v: _fmt(v, ".1f")), "gflops": df["gflops"].map(lambda v: _fmt(v, ".2f")),
        "time": df["train_time_s"].map(lambda v: _fmt(v, ".0f")), "ips": df["img_per_s"].map(lambda v: _fmt(v, ".0f")),
        "device": df["device"].map(lambda v: _fmt(v, "")),
    })
    cols = [("rank", "#"), ("entry", "entry"), ("init", "init"), ("scoring", "val score is"),
            ("n", "n"), ("seeds", "seeds"), ("views", "views"),
            ("overall", f"{metric_title('overall_acc', data, True)} [95% CI]"),
            ("cavg", f"{metric_title('class_avg_acc', data, True)} [95% CI]"), ("tta_views", "TTA views"),
            ("tta", "TTA overall"),
            ("tta_cavg", "TTA class-average"), ("decision", "decision"),
            ("mca", "balanced acc."), ("f1", "macro-F1"), *[(f"attr:{a}", a) for a in attributes],
            ("params", "params (M)"), ("gflops", "GFLOPs"), ("time", "train s (sum of epochs)"),
            ("ips", "img/s (median epoch)"), ("device", "device")]
    return markdown_table(view, cols)


LEVEL = 0.05  # significance level of the comparisons with the leader (the intervals are 1 - LEVEL)
# a Δ interval that excludes 0 while the sign-flip p (unadjusted) is >= LEVEL: a few images decide the difference (a
# rare class's, see few_images_note), every bootstrap resample keeps their whole gap, and the interval overclaims
DISAGREE = f" (excludes 0, but p >= {LEVEL:g}: a few images decide it; trust p)"


TEST_NAMES = {SEEDS_TEST: "t, seeds + images", IMAGES_TEST: "sign-flip, images"}


def _spread(row, key: str) -> str:
    """"; seeds MIN..MAX" after a row of replicas' score on `key`; "" for one run."""
    prefix = "overall" if key == "overall_acc" else "class"
    lo, hi = row.get(f"{prefix}_seed_min"), row.get(f"{prefix}_seed_max")
    if lo is None or pd.isna(lo):
        return ""
    return f"; seeds {lo:.4f}..{hi:.4f}"


def _seeds_cell(row) -> str:
    n = row.get("seeds")
    if n is None or pd.isna(n):
        return "-"
    return f"{int(n)} ({row['seed_list']})" if int(n) > 1 else "1"


def seed_noise(df: pd.DataFrame, metric: str) -> str | None:
    """The retraining noise measured on these images: the seed sd on `metric` of each row of replicas, as a range
    ("0.0013" or "0.0013-0.0069"); None when no row has replicas."""
    col = f"{'overall' if TARGETS[metric] == 'overall_acc' else 'class'}_seed_sd"
    sds = df[col].dropna() if col in df else pd.Series(dtype=float)
    if sds.empty:
        return None
    lo, hi = sds.min(), sds.max()
    return f"{lo:.4f}" if np.isclose(lo, hi) else f"{lo:.4f}-{hi:.4f}"


def render_significance(df: pd.DataFrame, metric: str = "overall", prefix: str = "") -> str:
    """The comparisons with the leader of one column: the plain view (prefix "") or the TTA views ("tta_"). Each
    row's p is its test's (`test`: over seeds and images when both rows have replicas, else the sign-flip over
    images); where the table has rows of replicas, a column says whether retraining noise is counted, and beside
    the image-only rows the seed sd measured here."""
    rest = df[~df[f"{prefix}leader"] & df[f"{prefix}p_holm"].notna()]
    if rest.empty:
        return "_Only one entry._"
    p_raw = rest[f"{prefix}p_value"] if f"{prefix}p_value" in rest else rest[f"{prefix}p_sign_flip"]
    test = rest[f"{prefix}tested_over"] if f"{prefix}tested_over" in rest else \
        pd.Series(IMAGES_TEST, index=rest.index)
    noise = seed_noise(df, metric)
    lead = df[df[f"{prefix}leader"]].iloc[0]

    def counted(row, t):
        if row["kind"] == "baseline":
            return "- (no training)"
        if t == SEEDS_TEST:
            return f"counted ({int(row['seeds'])} vs {int(lead['seeds'])} seeds)"
        return f"not counted (seed sd measured here: {noise})"

    view = pd.DataFrame({
        "entry": "`" + rest["entry"] + "`" + ("" if not prefix else " (" + rest["views"].where(
            rest["kind"] == "baseline", rest["tta_views"]) + ")"),
        "delta": [f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]"
                  + (DISAGREE if t == IMAGES_TEST and (lo > 0 or hi < 0) and p >= LEVEL else "")
                  for d, lo, hi, p, t in zip(rest[f"{prefix}delta"], rest[f"{prefix}delta_lo"],
                                             rest[f"{prefix}delta_hi"], p_raw, test)],
        "p": p_raw.map(lambda v: _p(v, 3)),
        "test": test.map(TEST_NAMES.get),
        "noise": [counted(r, t) for (_, r), t in zip(rest.iterrows(), test)],
        "holm": rest[f"{prefix}p_holm"].map(lambda v: _p(v, 3)),
        "sig": ["yes" if p < LEVEL else "no" for p in rest[f"{prefix}p_holm"]],
    })
    cols = [("entry", "entry"), ("delta", f"Δ {TARGETS[metric]} vs leader [95% CI]"), ("p", "p"),
            ("test", "test, over")]
    if noise is not None:
        cols.append(("noise", "retraining noise"))
    return markdown_table(view, [*cols, ("holm", "Holm-adjusted p"), ("sig", "different at 5%? (adjusted p)")])


def render_comparisons(df: pd.DataFrame, metric: str) -> list[str]:
    """Both comparison tables of one set of scored images: plain view against plain view, TTA against TTA."""
    leader = df[df["leader"]]["entry"].iloc[0]
    md = [f"On the plain view (no test-time augmentation), against the leader `{leader}`:", "",
          render_significance(df, metric), ""]
    if df["tta_leader"].any() and df["tta_p_holm"].notna().any():
        tta_leader = df[df["tta_leader"]].iloc[0]
        md += [f"At each entry's declared TTA views (models: plain+flip; an ensemble: its `--tta` views; the "
               f"majority baseline as it is), against that column's leader `{tta_leader['entry']}` "
               f"({tta_leader['tta_views'] if tta_leader['kind'] != 'baseline' else tta_leader['views']}):", "",
               render_significance(df, metric, "tta_"), ""]
    return md


OTHER_METRIC = {"overall_acc": "class_avg_acc", "class_avg_acc": "overall_acc"}
CI_COLUMNS = {"overall_acc": ("ci_lo", "ci_hi"), "class_avg_acc": ("class_ci_lo", "class_ci_hi")}


@dataclass(frozen=True)
class Dataset:
    """What the leaderboard says the dataset is: `challenge` for the FashionDataset layout (its two metrics are the
    2023 and 2024 challenges'; a CSV-layout dataset's are named by what they are), and a phrase naming it."""
    challenge: bool
    name: str


def describe_dataset(entries: list[Entry], fingerprint: str | None) -> Dataset:
    """The dataset of the ranked entries, from the layout and folder their run.json files record (an ensemble records
    neither: its members do). Runs from before layouts were recorded are FashionDataset runs when their schema is the
    FashionDataset's six attributes."""
    metas = [e.meta for e in entries if e.kind != "baseline"]
    meta = next((m for m in metas if "data_layout" in m), metas[0] if metas else {})
    layout = (meta.get("data_layout") or {}).get("layout")
    if layout is None:
        layout = "fashion" if meta and tuple(attributes_of(meta)) == ATTRIBUTES else "unknown"
    root = meta.get("data_root")
    folder = f"`{Path(root).name}`" if root else "(folder not recorded)"
    fp = f"fingerprint `{fingerprint}`"
    if layout == "fashion":
        return Dataset(True, f"{folder}, FashionDataset layout ({fp})")
    kind = "CSV layout" if layout == "csv" else "layout not recorded"
    return Dataset(False, f"{folder}, {kind} ({fp})")


def metric_title(key: str, data: Dataset, short: bool = False) -> str:
    """A metric's name in the report: with its challenge's year only for the FashionDataset layout."""
    return metric_name(key, data.challenge, short)


def _interval(row, key: str) -> str:
    lo, hi = (row[c] for c in CI_COLUMNS[key])
    return f"{_fmt(row[key])} [{_fmt(lo, '.3f')}, {_fmt(hi, '.3f')}]"


def _p(v, digits: int = 2) -> str:
    """A p-value as the report prints it (stats.format_p at LEVEL); "-" where there is none."""
    return "-" if v is None or pd.isna(v) else format_p(v, digits, LEVEL)


def _names(labels: list[str], limit: int = 3) -> str:
    """`a`, `b` and `c`; past `limit`, `a`, `b`, `c` and N more."""
    shown = [f"`{x}`" if not x.startswith("`") else x for x in labels[:limit]]
    if len(labels) > limit:
        return ", ".join(shown) + f" and {len(labels) - limit} more"
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def verdict(df: pd.DataFrame, metric: str, data: Dataset, entries: list[Entry]) -> str:
    """The report's answer in one sentence, from its plain-view comparisons with the leader (Holm-adjusted sign-flip
    p, the table's *different at 5%?*): who leads on the target with its interval, who is not distinguishable from
    it, who is behind it, and, when the leader is an ensemble, whether it beats each of its members."""
    key = TARGETS[metric]
    lead = df[df["leader"]].iloc[0]
    n = int(lead["n"])
    where = "val" if lead["scored_on"] == "val" else "out-of-fold"
    seeds = int(lead["seeds"]) if "seeds" in lead and not pd.isna(lead["seeds"]) else 1
    head = (f"`{lead['entry']}` leads on {metric_title(key, data)} with **{_interval(lead, key)}** "
            f"(plain view, {n} {where} images" + (f"; the mean of {seeds} seeds, its interval counting retraining "
                                                 f"and images)" if seeds > 1 else ")"))
    rest = df[~df["leader"] & df["p_holm"].notna()]
    if rest.empty:
        return head + "; it is the only entry scored on these images."
    same, behind = rest[rest["p_holm"] >= LEVEL], rest[rest["p_holm"] < LEVEL]
    parts = [head]
    if len(same):
        listed = [f"`{e}` (adjusted p {_p(p)})" for e, p in zip(same["entry"], same["p_holm"])]
        parts.append(f"{_names(listed)} {'is' if len(same) == 1 else 'are'} not distinguishable from it")
    if len(behind):
        top = behind["p_holm"].max()
        p = f"adjusted p {_p(top)}" if len(behind) == 1 else f"adjusted p <= {_p(top)}"
        who = _names(list(behind["entry"])) if len(behind) <= 3 else f"the other {len(behind)}"
        parts.append(f"{who} {'is' if len(behind) == 1 else 'are'} behind it ({p})")
    led = next(e for e in entries if e.label == lead["entry"])
    if led.kind == "ensemble":
        row_of = {r.label: e.label for e in entries for r in e.replicas}  # a replica's row: its set's
        named = led.meta.get("members", [])
        members = list(dict.fromkeys(row_of.get(m, m) for m in named if row_of.get(m, m) in set(df["entry"])))
        beaten = behind[behind["entry"].isin(members)]
        if members and len(beaten) == len(members):
            p = f"adjusted p <= {_p(beaten['p_holm'].max())}"
            if len(members) == len(named):
                parts.append(f"it beats each of its {len(members)} members ({p})")
            else:  # replicas of one model: their row
                rows = f"the row of its {len(named)} members" if len(members) == 1 else \
                    f"each of the {len(members)} rows of its {len(named)} members"
                parts.append(f"it beats {rows}, {_names(members)} ({p})")
    return "; ".join(parts) + "."


def render_summary(df: pd.DataFrame, metric: str, data: Dataset, entries: list[Entry]) -> str:
    """The summary table: rank, entry, the target with its interval, Δ vs the leader with its verdict, the other
    metric, what the score is (score_tag) and the cost; every other column is in the full table below it."""
    key, other = TARGETS[metric], OTHER_METRIC[TARGETS[metric]]
    by_label = labelled(entries)

    def delta(row):
        if row["leader"]:
            return "leader"
        if row["p_holm"] is None or pd.isna(row["p_holm"]):
            return "-"
        word = "behind" if row["p_holm"] < LEVEL else "not distinguishable"
        return f"{row['delta']:+.4f} (p {_p(row['p_holm'])}): {word}"

    def cost(row):
        g, t = row["gflops"], row["train_time_s"]
        if all(v is None or pd.isna(v) for v in (g, t)):
            return "-"
        return f"{_fmt(g, '.2f')} GFLOPs, {_fmt(t, '.0f')} s"

    view = pd.DataFrame({
        "rank": df["rank"],
        "entry": ["`" + e + "`" + ("" if v == "plain" else f" (views {v})") for e, v in zip(df["entry"], df["views"])],
        "target": ["**" + _interval(r, key).replace(" [", "** [", 1) + _spread(r, key) for _, r in df.iterrows()],
        "delta": [delta(r) for _, r in df.iterrows()],
        "other": [_interval(r, other) for _, r in df.iterrows()],
        "tag": [score_tag(by_label[e], by_label) for e in df["entry"]],
        "cost": [cost(r) for _, r in df.iterrows()],
    })
    return markdown_table(view, [("rank", "#"), ("entry", "entry"),
                                 ("target", f"{metric_title(key, data, short=True)} [95% CI]"),
                                 ("delta", "Δ vs leader (adjusted p): verdict"),
                                 ("other", f"{metric_title(other, data, short=True)} [95% CI]"),
                                 ("tag", "score is"), ("cost", "cost (GFLOPs per image, train s)")])


def _zero_classes(e: Entry) -> tuple[int, int]:
    """(classes present among the scored images that the entry got no image right in, classes present)."""
    present = [v for per in e.score["class_acc"] for v in per if v is not None]
    return sum(v == 0 for v in present), len(present)


def baseline_note(df: pd.DataFrame, metric: str, data: Dataset, entries: list[Entry]) -> list[str]:
    """A paragraph setting the entries against the majority baseline on the target: which are above it (the
    baseline's score lies below their 95% interval; by how much), not distinguishable from it (inside), below it
    (above), how many classes each gets no image right in (the 0.00 rows of the per-class table), and what the report
    knows of why: random init, image size and epochs. Written when an entry is not above the baseline or a model
    from random init gets no image right in some class; nothing when there is no baseline."""
    key = TARGETS[metric]
    base = df[df["kind"] == "baseline"]
    if base.empty:
        return []
    b = base.iloc[0][key]
    lo_col, hi_col = CI_COLUMNS[key]
    rows = df[df["kind"] != "baseline"]
    by_label = {e.label: e for e in entries}
    zero = {e: _zero_classes(by_label[e]) for e in rows["entry"]}
    scratch = [by_label[x] for x in rows["entry"] if by_label[x].kind == "model"
               and (by_label[x].meta.get("init") or {}).get("init") == "scratch"]
    above, near, below = rows[rows[lo_col] > b], rows[(rows[lo_col] <= b) & (rows[hi_col] >= b)], rows[rows[hi_col] < b]
    if not len(near) and not len(below) and not any(zero[e.label][0] for e in scratch):
        return []

    def items(part):
        listed = [f"`{r['entry']}` {_fmt(r[key])} ({r[key] - b:+.4f}), no image right in {zero[r['entry']][0]} of "
                  f"the {zero[r['entry']][1]} classes present" for _, r in part.iterrows()]
        return "; ".join(listed[:8]) + (f"; and {len(listed) - 8} more" if len(listed) > 8 else "")

    md = [f"**Against the majority baseline.** Predicting each attribute's most frequent training class (`majority "
          f"baseline`) scores {b:.4f} {metric_title(key, data)} here.", ""]
    for part, what in ((above, f"above it ({b:.4f} lies below the entry's 95% interval)"),
                       (near, f"not distinguishable from it ({b:.4f} lies inside the entry's 95% interval)"),
                       (below, f"below it ({b:.4f} lies above the entry's 95% interval)")):
        if len(part):
            md.append(f"- {what}: {items(part)}")
    if scratch:
        settings = [f"`{e.label}` ({e.meta['config']['recipe'].get('size', '?')} px, "
                    f"{e.meta['config']['recipe'].get('epochs', '?')} epochs)" for e in scratch]
        md.append(f"- trained from random init (no pretrained weights): {', '.join(settings)}. From random init a "
                  "short schedule on small images can learn little beyond the class frequencies, and the classes a "
                  "model never gets right show 0.00 in the per-class table; more epochs (`--epochs`), larger images "
                  "(`--size`) or ImageNet weights (`--pretrained`) give it a fair start.")
    return [*md, ""]


RETRAINING = ("- **Retraining noise.** A row of one run (*seeds* 1, an ensemble, the baseline) is one training: "
              "its interval and its comparisons count image noise only, and retraining it with another seed would "
              "move its score by an amount not counted there.")


def retraining_legend(noise: str | None) -> str:
    """The legend's paragraph on seeds: what a row of one run does not count, and, where rows of replicas exist
    (`noise`: their measured seed sd on the target), how their intervals and comparisons count it."""
    if noise is None:
        return RETRAINING + " `bench.run --seeds 0,1,2` trains each model once per seed and measures it."
    return (RETRAINING + f" Rows of replicas (`bench.run --seeds`; *seeds* > 1) measure it: on these images their "
            f"seed sd on the target is {noise}, printed beside each image-only comparison. Such a row is the mean "
            "over its seeds of every score, with the seeds' range (*seeds min..max*); its 95% interval is "
            "mean +- t x sqrt(s^2 / S + the image variance of the seed mean), s the sd over its S seeds and the "
            "image variance by the delta method, t with Welch-Satterthwaite degrees of freedom (S - 1 for the seeds, "
            "N - 1 for the images), not a bootstrap over seeds, which understates the spread of 3 seeds "
            "(reports/reference/seeds.md calibrates it). Two rows of replicas are compared over seeds and images "
            "(*test* t, seeds + images: Δ of the seed means with that t interval and p, both rows' seed variances "
            "and the paired image variance); a comparison with a row of one run keeps the image-only sign-flip "
            "test (retraining noise *not counted*). Both kinds of p enter one Holm family. A row's GFLOPs are one "
            "model's, its train s the mean over its seeds; its confusion matrix and galleries show its first seed.")


def render_legend(data: Dataset, metric: str, chosen: str, n_attr, n_class, tags: set[str],
                  noise: str | None = None, n_present: int | None = None) -> list[str]:
    """How to read the report: the method, once, after the tables (`noise`: seed_noise of the first table;
    `n_present`: the classes present among the first table's images, which the class average and its test weigh)."""
    key = TARGETS[metric]
    n_present = n_class if n_present is None else n_present
    classes = (f"each of the {n_class} classes" if n_present == n_class else
               f"each of the {n_present} classes present among the scored images (of {n_class}: a class with no "
               "image here has no accuracy to average)")
    overall, cavg = metric_title("overall_acc", data), metric_title("class_avg_acc", data)
    used = [t for t in SCORE_TAGS if any(t == tag.removesuffix(OPTIMISTIC) or (t == OPTIMISTIC.strip()
                                                                             and tag.endswith(OPTIMISTIC))
                                         for tag in tags)]
    return [
        "## How to read this report", "",
        f"- **Dataset** {data.name}. Entries are ranked and compared only with entries scored on the same images "
        "(the column *n*).",
        f"- Target metric: `{key}` ({chosen}): the default sort, the leader and the comparisons are on it.",
        f"- **Metrics.** {overall[0].upper() + overall[1:]} = correct attribute predictions / (N x {n_attr}) "
        f"(labelled cells only); {cavg} = accuracy of {classes}, then their plain mean over the "
        "classes present. *balanced acc.* (per-class recall averaged per attribute, then over attributes) and "
        "*macro-F1* are in the full table.",
        "- **95% intervals**: bootstrap over images, each resample keeping every class present (so the class "
        "average is always over the same classes).",
        "- **Δ vs leader and the verdict.** Each entry against the leader on the same images and like with like: "
        "plain-view scores with plain-view scores, TTA scores with TTA scores (*views* and *TTA views* say which "
        "views each score used; the summary is the plain view). Images are the independent units (errors on one "
        f"image's {n_attr} attributes are correlated): Δ has a paired bootstrap interval over images (per "
        "comparison, not adjusted); p is a paired sign-flip permutation test of each image's share of the "
        "difference (correct attributes for overall accuracy; for the class average, each right attribute weighted "
        f"by 1 / ({n_present} x images of its class)) ({N_PERM:,} seeded random flips). The comparisons of one table "
        "with its leader are one family: their p-values are Holm-Bonferroni adjusted; *behind* and *different at "
        f"5%?* mean adjusted p < {LEVEL:g}, *not distinguishable* adjusted p >= {LEVEL:g}. Holm keeps the chance of "
        "any false \"behind\" in a table <= 5% for comparisons fixed in advance; here the leader was itself picked "
        "on these images, which favours it, so where several entries are close to it that chance is higher than "
        "5%.",
        retraining_legend(noise),
        "- **score is** (in full: *val score is*): where the scored images chose a model's epoch (checkpoint "
        "selection) or tuned parameters, its score is in-sample for that choice, so optimistic. Of an ensemble "
        "only the weights and the decision rule are cross-fitted (out-of-fold over val), and only when k-fold CV "
        "ran; its members count as selected on val unless all kept their last epoch. "
        + " ".join(f"*{t}*: {SCORE_TAGS[t]}." for t in used),
        "- **decision**: how probabilities became predictions (argmax, or a rule fitted on val, e.g. logit "
        "adjustment with its tau per attribute).",
        "- **cost**: GFLOPs per image count every model a test prediction runs (a k-fold member: its K fold "
        "models; an ensemble: its members x TTA views); *train s (sum of epochs)* adds up per-epoch wall times "
        "(over all members for an ensemble, every training the entry needed); *img/s (median epoch)* is the median "
        "of per-epoch training throughput, so on a shared machine the two need not agree.", ""]


def ensemble_kind(e: Entry, by_label: dict[str, Entry]) -> tuple[str, str] | None:
    """("seeds", set name) for an ensemble whose members are two or more replicas of one set (a deep ensemble),
    ("backbones", models) for one of two or more different models; None otherwise or when a member is not on the
    leaderboard."""
    from bench.replicas import set_name
    members = [by_label.get(m) for m in e.meta.get("members", [])]
    if e.kind != "ensemble" or len(members) < 2 or any(m is None for m in members):
        return None
    sets = {set_name(m.extra["dir"], m.meta) for m in members}
    if len(sets) == 1 and None not in sets:
        return "seeds", sets.pop()
    models = [(m.meta.get("config") or {}).get("model") or m.meta.get("name") for m in members]
    return ("backbones", ", ".join(f"`{x}`" for x in models)) if len(set(models)) == len(models) else None


def seeds_or_backbones(entries: list[Entry], metric: str, data: Dataset) -> list[str]:
    """Deep ensembles (replicas of one model) beside ensembles of different backbones: each one's target score
    (plain view), members, GFLOPs and gain over its best member, and each pair with equal member counts compared
    on the same images (backbones - seeds: paired bootstrap interval and sign-flip p, one comparison each, not
    adjusted). Nothing without a deep ensemble."""
    key = TARGETS[metric]
    by_label = labelled(entries)
    kinds = {e.label: k for e in entries if (k := ensemble_kind(e, by_label))}
    if not any(k[0] == "seeds" for k in kinds.values()):
        return []
    base = next(e for e in entries if "labels" in e.extra)
    labels, nc = base.extra["labels"], tuple(base.meta["num_classes"])
    rows = []
    for e in sorted((by_label[x] for x in kinds), key=lambda e: (kinds[e.label][0], -e.score[key], e.label)):
        kind, what = kinds[e.label]
        members = e.meta["members"]
        best = max(members, key=lambda m: by_label[m].score[key])
        rows.append({"entry": f"`{e.label}`", "kind": "seeds" if kind == "seeds" else "backbones",
                     "members": f"{len(members)} seeds of `{what}`" if kind == "seeds" else what,
                     "gflops": _fmt(e.meta.get("gflops"), ".2f"), "score": _fmt(e.score[key]),
                     "gain": f"{e.score[key] - by_label[best].score[key]:+.4f} (vs `{best}`)"})
    md = ["### Seeds or backbones?", "",
          f"Ensembles of replicas of one model (seeds) beside ensembles of different models (backbones), on "
          f"{metric_title(key, data)}, plain view; *gain* is over the ensemble's best member.", "",
          markdown_table(pd.DataFrame(rows), [("entry", "ensemble"), ("kind", "kind"), ("members", "members"),
                                              ("gflops", "GFLOPs per image"), ("score", TARGETS[metric]),
                                              ("gain", "gain over best member")]), ""]
    seeds = [x for x, k in kinds.items() if k[0] == "seeds"]
    backbones = [x for x, k in kinds.items() if k[0] == "backbones"]
    pairs = [(b, s) for s in seeds for b in backbones
             if len(by_label[b].meta["members"]) == len(by_label[s].meta["members"])]
    for b, s in pairs:
        num = {x: image_parts(labels, by_label[x].pred == labels, nc, metric) for x in (b, s)}
        pb = paired_bootstrap(num[b][0], num[s][0], den=num[b][1])
        p = float(sign_flip_p(image_diff(num[b][0], num[s][0], num[b][1]), N_PERM))
        word = "not distinguishable" if p >= LEVEL else \
            "backbone diversity is worth more here" if pb["delta"] > 0 else "the seeds are worth more here"
        md.append(f"- `{b}` - `{s}` ({len(by_label[s].meta['members'])} members each; "
                  f"{_fmt(by_label[b].meta.get('gflops'), '.2f')} vs {_fmt(by_label[s].meta.get('gflops'), '.2f')} "
                  f"GFLOPs): {pb['delta']:+.4f} [{pb['lo']:+.4f}, {pb['hi']:+.4f}], sign-flip p {_p(p, 3)} ({word}; "
                  "one comparison, images only, not adjusted).")
    if not pairs:
        md.append(f"- No ensemble of different backbones with as many members here: e.g. `python -m bench.ensemble "
                  f"--runs RUN --name backbones{len(by_label[seeds[0]].meta['members'])}` with one replica of each "
                  f"model makes one to set beside it.")
    return [*md, ""]


def render_per_class(entries: list[Entry], class_names, attributes, extra: dict | None = None) -> str:
    """`extra`: more columns, title -> {(attribute index, class): cell} (the galleries' wrong / labelled links)."""
    rows = []
    for a, names in enumerate(class_names):
        for c, name in enumerate(names):
            row = {"attribute": attributes[a], "class": name}
            for e in entries:
                v = e.score["class_acc"][a][c]
                row[e.label] = "n/a" if v is None else f"{v:.2f}"
            row.update({title: cells[a, c] for title, cells in (extra or {}).items()})
            rows.append(row)
    df = pd.DataFrame(rows)
    return markdown_table(df, [("attribute", "attribute"), ("class", "class"),
                               *[(e.label, f"`{e.label}`") for e in entries], *[(t, t) for t in extra or {}]])


def unknown_gallery(entries: list[Entry], name: str) -> str | None:
    """Why `--gallery name` names no entry (with the valid names), or None when it is one."""
    valid = sorted(label for label, e in labelled(entries).items() if e.kind != "baseline" and not e.replicas)
    if name in valid:
        return None
    return f"--gallery {name!r}: no such entry; valid entries: {', '.join(valid) or 'none'}"


def galleries(entries: list[Entry], labels: list[str], runs_dir: Path, files: Path) -> tuple[dict, list[str]]:
    """Draw the galleries of the named entries (bench/reporting/gallery.py): the per-class table's extra columns
    and the report's section; a gallery that cannot be drawn gets one line saying why."""
    from bench.reporting import gallery as rg
    extra, md = {}, ["## Mistakes you can see", "",
                     "The most confident wrong predictions per attribute (true / predicted class / p, the "
                     "probability of the predicted class, highest first), and the rarest classes' images with what "
                     "was predicted. The per-class table links each class's wrong / labelled count to its "
                     "attribute's grid.", ""]
    for label in labels:
        e = labelled(entries)[label]
        try:  # the entry's main column: the predictions the per-class accuracy beside the gallery's counts scores
            g = rg.build_gallery(e.label, e.meta, e.extra["labels"], e.shown.main, runs_dir, files)
        except (rg.GalleryUnavailable, OSError) as err:
            md += [f"_No gallery for `{label}`: {err}._", ""]
            continue
        extra[f"`{label}` wrong on {g.split}"] = rg.per_class_links(g)
        md += rg.render(g)
    return extra, md


def _write(out: Path, md: list[str]) -> Path:
    """Write the report and delete the figures it no longer links (e.g. of entries whose runs are gone)."""
    path = out / "leaderboard.md"
    text = "\n".join(md).rstrip() + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    for f in (out / "leaderboard_files").glob("*.png"):
        if not f.name.startswith(".") and f"](leaderboard_files/{f.name})" not in text:  # "." : a writer's temp
            f.unlink()
    return path


TARGET_FILE = "leaderboard-target.txt"  # in the report folder: the target metric a command last named


def resolve_target(out: Path, metric: str | None) -> tuple[str, str]:
    """The report's target metric and how it was chosen. A metric a command names (`--metric`) is recorded in the
    report folder, so every later command that rebuilds this leaderboard without naming one keeps it (a plain
    `bench.run` after `bench.ensemble --metric class` must not turn the leaderboard back to overall accuracy)."""
    recorded = out / TARGET_FILE
    if metric is not None:
        if metric not in TARGETS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(TARGETS)}")
        return metric, f"`--metric {metric}`"
    saved = recorded.read_text().strip() if recorded.exists() else ""
    if saved in TARGETS:
        return saved, (f"`--metric {saved}`, named by an earlier command on this leaderboard and kept until a "
                       f"command names another")
    return "overall", "the default; `--metric class` targets the class average"


STATS_CACHE = ".stats-cache.json"  # beside leaderboard.md: bench/stats.py ResultCache


def build_report(runs_dir: str | Path = "runs", out: str | Path | None = None, sort: str | None = None,
                 dataset: str | None = None, quiet: bool = False, metric: str | None = None,
                 gallery: str | None = None) -> Path | None:
    """Write the leaderboard of `runs_dir` to `out` (default report_dir(runs_dir)); its path, or None when nothing
    is ranked (a report listing the runs left out, and why, is still written when there are any). `metric` is the
    target (bench.metrics.TARGETS): the default sort, the leader and the comparisons; None keeps the one a command
    last named for this report folder (resolve_target), else overall. `sort` reorders rows only. The leader, and the
    entry `gallery` names, get galleries of their mistakes (bench/reporting/gallery.py); a `gallery` naming no
    entry raises ValueError (with the valid names) before anything is written.

    The bootstrap intervals and paired comparisons come from bench/stats.py's results cache, kept beside the report
    (.stats-cache.json, keyed by the probabilities' contents): a rebuild recomputes only what
    changed, with the cold build's numbers (tests/test_report.py)."""
    runs_dir = Path(runs_dir)
    out = Path(out) if out is not None else report_dir(runs_dir)
    check_report_folder(runs_dir, out)
    with results_cache(out / STATS_CACHE):
        return _build_report(runs_dir, out, sort, dataset, quiet, metric, gallery)


class ReportFolderError(ValueError):
    """A report folder that is a link: the build writes figures there and deletes the ones it no longer links."""


def check_report_folder(runs_dir: Path, out: Path) -> None:
    """ReportFolderError, before anything is written, when `out/leaderboard_files` is a link, or `out` is one inside
    the runs folder (RUNS/_report): a runs folder from someone else could link them to the user's own files, which a
    rebuild would overwrite and delete (every PNG the new report does not link). A report folder the user links
    outside any runs folder (e.g. reports/ -> a shared drive) is theirs to make."""
    inside_runs = runs_dir.absolute() in out.absolute().parents
    for folder in ([out] if inside_runs else []) + [out / "leaderboard_files"]:
        if folder.is_symlink():
            raise ReportFolderError(
                f"{folder} is a link (to {os.readlink(folder)}): the leaderboard writes its figures there and deletes "
                f"the PNGs it no longer links, so it does not follow a link a runs folder may have brought; remove "
                f"the link, or build the report elsewhere (python -m bench.report --out DIR)")


def refresh_report(runs_dir: str | Path, metric: str | None = None) -> Path | None:
    """The leaderboard a command rebuilds after its own work (bench.run, distill, ensemble, tune): build_report, but
    a report that cannot be built (a replica set whose replicas differ in more than the seed: ReplicaError, found
    before anything is written) is named on stderr instead of ending the command in a traceback; the command's own
    artifacts stand, and the report folder keeps its previous files. `python -m bench.report` refuses the same
    runs with exit 2."""
    try:
        return build_report(runs_dir, metric=metric)
    except (ReplicaError, ReportFolderError) as e:
        print(f"warning: the leaderboard was not rebuilt ({report_dir(Path(runs_dir)) / 'leaderboard.md'} is from "
              f"before this command): {e}", file=sys.stderr)
        return None


def _build_report(runs_dir: Path, out: Path, sort, dataset, quiet, metric, gallery) -> Path | None:
    from bench.reporting import plots as rp
    named = metric is not None
    metric, chosen = resolve_target(out, metric)
    sort = sort or TARGETS[metric]
    entries, notes, fp = collect(runs_dir, dataset)
    if gallery is not None and (why := unknown_gallery(entries, gallery)):
        raise ValueError(why)
    if not entries and not notes:
        if not quiet:
            print(f"report: no runs under {runs_dir}/, nothing written", file=sys.stderr)
        return None
    files = out / "leaderboard_files"
    files.mkdir(parents=True, exist_ok=True)
    if named:
        atomic_write(out / TARGET_FILE, lambda tmp: tmp.write_text(metric + "\n"))
    attributes = attributes_of(entries[0].meta) if entries else ()
    md = ["# fashion-bench leaderboard", ""]
    if not entries:
        (out / "leaderboard.csv").unlink(missing_ok=True)
        md += [f"Built by `python -m bench.report` from the artifacts in `{runs_dir}/`.", "",
               "_No finished runs with scored validation probabilities yet._", "",
               "## Not on the leaderboard", "", *[f"- {n}" for n in notes]]
        path = _write(out, md)
        if not quiet:
            print(f"report: nothing to rank under {runs_dir}/ ({path} lists why)", file=sys.stderr)
        return None
    by_set = groups(entries)
    first, *rest = by_set
    frames = {key: leaderboard_frame(group, sort, metric) for key, group in by_set.items()}
    df = frames[first]
    everything = pd.concat(frames.values(), ignore_index=True)
    atomic_write(out / "leaderboard.csv", lambda tmp: everything.to_csv(tmp, index=False, float_format="%.6g"))
    entries = [e for group in by_set.values() for e in group]
    base = next(e for e in entries if e.kind != "baseline")
    class_names = base.meta["class_names"]
    models = [e for e in entries if e.kind != "baseline"]
    ordered = [e for group in by_set.values() for e in sorted(group, key=lambda e: (-e.score[sort], e.label))]
    data = describe_dataset(entries, fp)
    by_label = labelled(entries)
    # the answer first: one verdict sentence, the summary table, what an entry near the majority baseline means
    md += [verdict(df, metric, data, by_set[first]), "", render_summary(df, metric, data, by_set[first]), "",
           *baseline_note(df, metric, data, by_set[first]),
           f"Dataset {data.name}; target metric `{TARGETS[metric]}`, rows sorted by `{sort}`; built by `python -m "
           f"bench.report` from `{runs_dir}/`. Every column, the comparisons and the method are below"
           + (f"; {len(rest)} more table(s) of entries scored out-of-fold over train + val" if rest else "")
           + (f"; {len(notes)} run(s) not ranked, listed under *Not on the leaderboard*" if notes else "") + ".", "",
           f"## Leaderboard: {describe_group(first, by_set[first])}", "", *missing_note(by_set[first], attributes),
           *few_images_note(by_set[first], class_names, attributes),
           render_leaderboard(df, attributes, data), "",
           "## Is the difference real?", "",
           f"Each entry against the leader on `{TARGETS[metric]}`, on the same images and like with like (the "
           "method: *How to read this report*, below).", "", *render_comparisons(df, metric),
           *seeds_or_backbones(by_set[first], metric, data)]
    for key in rest:
        md += [f"## Leaderboard: {describe_group(key, by_set[key])}", "",
               "k-fold members and ensembles of them: every image scored by a model that did not train on it.", "",
               verdict(frames[key], metric, data, by_set[key]), "",
               render_summary(frames[key], metric, data, by_set[key]), "",
               *baseline_note(frames[key], metric, data, by_set[key]),
               *missing_note(by_set[key], attributes), *few_images_note(by_set[key], class_names, attributes),
               "Every column:", "", render_leaderboard(frames[key], attributes, data), "",
               f"Against this table's leader on `{TARGETS[metric]}`, as above.",
               "", *render_comparisons(frames[key], metric)]
    tags = {score_tag(e, by_label) for e in entries}
    md += render_legend(data, metric, chosen, len(attributes), sum(base.meta["num_classes"]), tags,
                        seed_noise(df, metric), _zero_classes(base)[1])
    md += ["## Accuracy vs cost", "",
           "GFLOPs per image count every model a test prediction runs (a k-fold member: its K fold models; an "
           "ensemble: its members x TTA views); training time adds every training the entry needed (a refit "
           "member: its val run and its refit). One figure per set of scored images.", ""]
    drawn = False
    for key, group in by_set.items():
        name = "pareto.png" if key == "val" else f"pareto-{slug(key)}.png"
        where = "val" if key == "val" else "out-of-fold (train + val)"
        n = len(next(e for e in group if "labels" in e.extra).extra["labels"])
        if rp.pareto([e for e in group if e.kind != "baseline"], files / name,
                     f"{where} {TARGETS[metric]} (n = {n})", TARGETS[metric]):
            md += [f"![accuracy vs cost: {describe_group(key, group)}](leaderboard_files/{name})", ""]
            drawn = True
    if not drawn:
        md += ["_No entries with GFLOPs and training time._", ""]
    md += ["## Training curves", ""]
    if rp.curves([r for e in models for r in runs_of(e)], files / "curves.png"):  # each seed its own curve
        md += ["![validation accuracy per epoch](leaderboard_files/curves.png)", ""]
    else:
        md += ["_No training histories found._", ""]
    counts = base.meta.get("train_class_counts")
    md += ["## Class distribution and loss weights", ""]
    if counts:
        from bench.training.schemes import LOSSES, class_weights
        weights = {}
        for scheme in LOSSES:  # one line per distinct weighting (focal and logit schemes weight like `none`)
            w = [class_weights(c, scheme) for c in counts]
            if not any(all(np.allclose(a, b) for a, b in zip(w, seen)) for seen in weights.values()):
                weights[scheme] = w
        rp.class_distribution(counts, class_names, weights, files / "class_distribution.png", attributes)
        md += ["Training counts per class (bars) and the weight each class-weighting scheme gives it (lines, "
               "normalised so the mean weight per training image is 1).", "",
               "![class distribution](leaderboard_files/class_distribution.png)", ""]
    else:
        md += ["_No training class counts recorded in the runs._", ""]
    # galleries: the first table's best entry on the target that has probabilities (not the baseline), and --gallery's
    best = min((e for e in by_set[first] if e.kind != "baseline"), key=lambda e: (-e.score[TARGETS[metric]], e.label))
    best = runs_of(best)[0]  # a row of replicas: its first seed's predictions, under that replica's own label
    extra, gallery_md = galleries(entries, list(dict.fromkeys([best.label] + ([gallery] if gallery else []))),
                                  runs_dir, files)
    md += ["## Per-class accuracy (recall)", "", render_per_class(ordered, class_names, attributes, extra), "",
           *gallery_md,
           "## Confusion matrices", ""]
    for e in ordered:
        if e.kind == "baseline":
            continue
        name = f"confusion-{slug(e.label)}.png"
        title = e.label if not e.replicas else f"{e.label}: seed {seed_of(e.replicas[0].meta)} shown"
        rp.confusion(e.extra["labels"], e.pred, class_names, files / name, title, attributes)
        md += [f"<details><summary><code>{e.label}</code></summary>", "", f"![confusion {e.label}](leaderboard_files/{name})",
               "", "</details>", ""]
    if notes:
        md += ["## Not on the leaderboard", "", *[f"- {n}" for n in notes], ""]
    path = _write(out, md)
    if not quiet:
        leader = df[df["leader"]].iloc[0]
        print(f"report: {path} ({len(entries)} entries; leader `{leader['entry']}` "
              f"{TARGETS[metric]} {leader[TARGETS[metric]]:.4f})")
    return path
