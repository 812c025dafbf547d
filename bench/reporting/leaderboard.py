"""Leaderboard report rebuilt from run artifacts alone (no retraining); same artifacts, same report (library of
bench.report).

A report belongs to its runs folder: by default a folder named `runs` reports to `reports/` beside it (runs/ ->
reports/), any other RUNS to RUNS/_report/, so training elsewhere never overwrites another leaderboard. Writes
OUT/leaderboard.md, its CSV twin OUT/leaderboard.csv, and figures in OUT/leaderboard_files/ (linked relatively so the
report renders on a code host; figures the new report does not use are deleted). Runs still training, failed runs
and runs without val labels or probabilities are listed in their own section instead of the leaderboard. With
nothing to rank it says so on stderr and exits 1.

Every score is on the validation split, which also chose each model's epoch (and any tuned parameters), so it is
optimistic; the report says per entry what its val score is. Significance against the leader: paired sign-flip
permutation test over images, Holm-adjusted over all comparisons with the leader.
"""
from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.artifacts import RunArtifacts, atomic_write, find_runs
from bench.data import attributes_of, class_counts
from bench.metrics import TARGETS, image_parts, majority_from_counts, probs_to_pred, score
from bench.stats import bootstrap_ci, holm, image_diff, paired_bootstrap, sign_flip_p

SORT_KEYS = ("overall_acc", "class_avg_acc", "mean_class_acc", "macro_f1")
N_PERM = 10000  # random sign flips per comparison with the leader


@dataclass
class Entry:
    """One leaderboard row. `pred` is the entry on the plain view (no test-time augmentation: a model's plain
    probabilities, an ensemble of its members' plain probabilities); `tta_pred` the entry at its declared views (a
    model: plain + flip; an ensemble: its --tta views), None when it has no other views. Rows are compared column
    with column, so no entry's TTA score meets another's plain score."""
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
        elif "labels" not in (probs := art.load_probs("val")):
            notes.append(f"`{art.label}`: its val split has no labels, nothing to score")
        else:
            usable.append((art, probs))
    fingerprint = lambda a: a.meta.get("dataset") or a.meta["config"]["dataset"]  # noqa: E731
    fps = Counter(fingerprint(a) for a, _ in usable)
    if not fps:
        return [], notes, None
    chosen = dataset or fps.most_common(1)[0][0]
    for fp, n in fps.items():
        if fp != chosen:
            notes.append(f"{n} run(s) trained on another dataset (fingerprint `{fp}`): `--dataset {fp}` reports them")
    entries = [make_entry(a, p) for a, p in usable if fingerprint(a) == chosen]
    for key, group in groups(entries).items():  # a majority baseline on each set of scored images
        if (baseline := majority_baseline(key, group)) is not None:
            entries.append(baseline)
    return entries, notes, chosen


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
    nc = tuple(art.meta["num_classes"])
    labels = probs["labels"]
    kind = art.meta.get("kind", "model")
    views, tta_pred, tta_views = "plain", None, "-"
    if kind == "ensemble":  # it stores the predictions of its decision rule (e.g. logit adjustment)
        declared = "+".join(art.meta.get("views", ["plain"]))
        if "pred_plain" in probs:
            pred = probs["pred_plain"]
            if declared != "plain":
                tta_pred, tta_views = probs["pred"], declared
        else:  # an entry made before ensembles stored their plain-view twin: its one score is at its views
            pred, views = probs["pred"], declared
    else:
        pred = probs_to_pred(probs["plain"], nc)
        if "flip" in probs:
            tta_pred, tta_views = probs_to_pred((probs["plain"] + probs["flip"]) / 2, nc), "plain+flip"
    hist_path = art.dir / "history.csv"
    history = pd.read_csv(hist_path) if hist_path.exists() else None
    extra = {"labels": labels, "dir": art.dir, **({"fold": probs["fold"]} if "fold" in probs else {})}
    return Entry(art.label, kind, art.meta, pred, pred == labels, score(labels, pred, nc, attributes_of(art.meta)),
                 tta_pred, tta_views,
                 history, extra, views)


def compare_with_leader(preds: dict[str, np.ndarray | None], labels, nc, metric: str) -> dict:
    """The leader on `metric` among the entries (label -> predictions; None: not in this comparison), and every
    other one against it on the same images: paired bootstrap interval of the difference and a sign-flip p,
    Holm-adjusted over the family. {"leader": label, label: {delta, delta_lo, delta_hi, p_sign_flip, p_holm}}; the
    leader's row has delta 0."""
    scored = sorted(lab for lab, p in preds.items() if p is not None)
    if not scored:
        return {"leader": None}
    value = {lab: score(labels, preds[lab], nc)[TARGETS[metric]] for lab in scored}
    num = {lab: image_parts(labels, preds[lab] == labels, nc, metric)[0] for lab in scored}
    den = image_parts(labels, preds[scored[0]] == labels, nc, metric)[1]
    leader = min(scored, key=lambda lab: (-value[lab], lab))
    others = [lab for lab in scored if lab != leader]
    # one family of tests, every entry against the leader: Holm keeps the chance of any false "yes" at 5%
    p = sign_flip_p(np.stack([image_diff(num[o], num[leader], den) for o in others]), N_PERM) if others else []
    out = {"leader": leader, leader: dict(delta=0.0, delta_lo=None, delta_hi=None, p_sign_flip=None, p_holm=None)}
    for o, pv, ph in zip(others, p, holm(p)):
        pb = paired_bootstrap(num[o], num[leader], den=den)
        out[o] = dict(delta=pb["delta"], delta_lo=pb["lo"], delta_hi=pb["hi"], p_sign_flip=float(pv),
                      p_holm=float(ph))
    return out


def leaderboard_frame(entries: list[Entry], sort: str = "overall_acc", metric: str = "overall") -> pd.DataFrame:
    """One row per entry, sorted by `sort`; intervals for both challenge metrics; every entry compared with the
    leader on the target `metric` (the leader is the best entry on it), on the plain view and, separately, at each
    entry's declared TTA views (columns tta_*)."""
    entries = sorted(entries, key=lambda e: (-e.score[sort], e.label))
    base = next(e for e in entries if "labels" in e.extra)  # the baseline carries none; all share the val labels
    labels, nc, attributes = base.extra["labels"], tuple(base.meta["num_classes"]), attributes_of(base.meta)
    parts = {m: {e.label: image_parts(labels, e.correct, nc, m) for e in entries} for m in TARGETS}
    plain = compare_with_leader({e.label: e.pred for e in entries}, labels, nc, metric)
    # TTA: each entry at its declared views; the baseline's constant prediction has no views to add
    tta = compare_with_leader({e.label: e.pred if e.kind == "baseline" else e.tta_pred for e in entries}, labels, nc,
                              metric)
    rows, columns = [], None
    by_label = {x.label: x for x in entries}
    for rank, e in enumerate(entries, 1):
        m, s = e.meta, e.score
        lo, hi = bootstrap_ci(*parts["overall"][e.label][:1], den=parts["overall"][e.label][1])
        clo, chi = bootstrap_ci(*parts["class"][e.label][:1], den=parts["class"][e.label][1])
        ts = score(labels, e.tta_pred, nc, attributes) if e.tta_pred is not None and e.kind != "baseline" else None
        row = {"rank": rank, "entry": e.label, "kind": e.kind, "init": init_label(m) if e.kind == "model" else "-",
               "val_scoring": val_scoring(e, by_label), "decision": decision_label(e), "views": e.views,
               "overall_acc": s["overall_acc"], "ci_lo": lo, "ci_hi": hi,
               "class_avg_acc": s["class_avg_acc"], "class_ci_lo": clo, "class_ci_hi": chi,
               "tta_views": e.tta_views if ts else "-", "tta_overall_acc": ts["overall_acc"] if ts else None,
               "tta_class_avg_acc": ts["class_avg_acc"] if ts else None,
               "mean_class_acc": s["mean_class_acc"], "macro_f1": s["macro_f1"],
               "params_M": round(m["params"] / 1e6, 2) if "params" in m else None, "gflops": m.get("gflops"),
               "train_time_s": m.get("train_time_s"), "img_per_s": m.get("img_per_s"), "device": m.get("device"),
               "leader": e.label == plain["leader"], "n": len(labels), "scored_on": e.meta.get("scored_on", "val"),
               **plain[e.label], "tta_leader": e.label == tta["leader"],
               **{f"tta_{k}": v for k, v in tta.get(e.label, dict.fromkeys(plain[e.label])).items()}}
        # an attribute's accuracy column is its name, or acc_<name> where the row has a column of that name
        # already (a CSV dataset may call an attribute `n`, `rank` or `device`)
        columns = columns or {a: f"acc_{a}" if a in row else a for a in attributes}
        row.update({columns[a]: s["attr_acc"][a] for a in attributes})
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["attribute_columns"] = columns or {a: a for a in attributes}
    return df


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


def render_leaderboard(df: pd.DataFrame, attributes) -> str:
    view = pd.DataFrame({
        "rank": df["rank"], "entry": "`" + df["entry"] + "`", "init": df["init"], "scoring": df["val_scoring"],
        "n": df["n"],
        "overall": [f"**{_fmt(a)}** [{_fmt(lo, '.3f')}, {_fmt(hi, '.3f')}]" for a, lo, hi in
                    zip(df["overall_acc"], df["ci_lo"], df["ci_hi"])],
        "views": df["views"], "tta_views": df["tta_views"], "decision": df["decision"],
        "tta": df["tta_overall_acc"].map(_fmt), "tta_cavg": df["tta_class_avg_acc"].map(_fmt),
        "cavg": [f"**{_fmt(a)}** [{_fmt(lo, '.3f')}, {_fmt(hi, '.3f')}]" for a, lo, hi in
                 zip(df["class_avg_acc"], df["class_ci_lo"], df["class_ci_hi"])],
        "mca": df["mean_class_acc"].map(_fmt),
        "f1": df["macro_f1"].map(_fmt),
        **{f"attr:{a}": df[df.attrs["attribute_columns"][a]].map(lambda v: _fmt(v, ".3f")) for a in attributes},
        "params": df["params_M"].map(lambda v: _fmt(v, ".1f")), "gflops": df["gflops"].map(lambda v: _fmt(v, ".2f")),
        "time": df["train_time_s"].map(lambda v: _fmt(v, ".0f")), "ips": df["img_per_s"].map(lambda v: _fmt(v, ".0f")),
        "device": df["device"].map(lambda v: _fmt(v, "")),
    })
    cols = [("rank", "#"), ("entry", "entry"), ("init", "init"), ("scoring", "val score is"),
            ("n", "n"), ("views", "views"), ("overall", "overall acc [95% CI]"),
            ("cavg", "class-average acc (2024) [95% CI]"), ("tta_views", "TTA views"), ("tta", "TTA overall"),
            ("tta_cavg", "TTA class-average"), ("decision", "decision"),
            ("mca", "balanced acc."), ("f1", "macro-F1"), *[(f"attr:{a}", a) for a in attributes],
            ("params", "params (M)"), ("gflops", "GFLOPs"), ("time", "train s (sum of epochs)"),
            ("ips", "img/s (median epoch)"), ("device", "device")]
    return markdown_table(view, cols)


LEVEL = 0.05  # significance level of the comparisons with the leader (the intervals are 1 - LEVEL)
# a Δ interval that excludes 0 while the sign-flip p (unadjusted) is >= LEVEL: a few images decide the difference (a
# rare class's, see few_images_note), every bootstrap resample keeps their whole gap, and the interval overclaims
DISAGREE = f" (excludes 0, but p >= {LEVEL:g}: a few images decide it; trust p)"


def render_significance(df: pd.DataFrame, metric: str = "overall", prefix: str = "") -> str:
    """The comparisons with the leader of one column: the plain view (prefix "") or the TTA views ("tta_")."""
    rest = df[~df[f"{prefix}leader"] & df[f"{prefix}p_holm"].notna()]
    if rest.empty:
        return "_Only one entry._"
    view = pd.DataFrame({
        "entry": "`" + rest["entry"] + "`" + ("" if not prefix else " (" + rest["views"].where(
            rest["kind"] == "baseline", rest["tta_views"]) + ")"),
        "delta": [f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]" + (DISAGREE if (lo > 0 or hi < 0) and p >= LEVEL else "")
                  for d, lo, hi, p in zip(rest[f"{prefix}delta"], rest[f"{prefix}delta_lo"],
                                          rest[f"{prefix}delta_hi"], rest[f"{prefix}p_sign_flip"])],
        "p": rest[f"{prefix}p_sign_flip"].map(lambda v: _fmt(v, ".3g")),
        "holm": rest[f"{prefix}p_holm"].map(lambda v: _fmt(v, ".3g")),
        "sig": ["yes" if p < LEVEL else "no" for p in rest[f"{prefix}p_holm"]],
    })
    return markdown_table(view, [("entry", "entry"), ("delta", f"Δ {TARGETS[metric]} vs leader [95% CI]"),
                                 ("p", "sign-flip p"), ("holm", "Holm-adjusted p"),
                                 ("sig", "different at 5%? (adjusted p)")])


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
    valid = sorted(e.label for e in entries if e.kind != "baseline")
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
        e = next(x for x in entries if x.label == label)
        try:
            with np.load(e.extra["dir"] / "probs_val.npz") as z:
                probs = {k: z[k] for k in z.files}
            g = rg.build_gallery(e.label, e.kind, e.meta, probs, runs_dir, files)
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


def build_report(runs_dir: str | Path = "runs", out: str | Path | None = None, sort: str | None = None,
                 dataset: str | None = None, quiet: bool = False, metric: str | None = None,
                 gallery: str | None = None) -> Path | None:
    """Write the leaderboard of `runs_dir` to `out` (default report_dir(runs_dir)); its path, or None when nothing
    is ranked (a report listing the runs left out, and why, is still written when there are any). `metric` is the
    target (bench.metrics.TARGETS): the default sort, the leader and the comparisons; None keeps the one a command
    last named for this report folder (resolve_target), else overall. `sort` reorders rows only. The leader, and the
    entry `gallery` names, get galleries of their mistakes (bench/reporting/gallery.py); a `gallery` naming no
    entry raises ValueError (with the valid names) before anything is written."""
    from bench.reporting import plots as rp
    runs_dir = Path(runs_dir)
    out = Path(out) if out is not None else report_dir(runs_dir)
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
    schema = entries[0].meta if entries else None
    attributes = attributes_of(schema) if schema else ()
    n_attr = len(attributes) if schema else "A"
    n_class = sum(schema["num_classes"]) if schema else "K"
    md = ["# fashion-bench leaderboard", "",
          f"Built by `python -m bench.report` from the artifacts in `{runs_dir}/`. Overall accuracy = correct "
          f"attribute predictions / (N x {n_attr}) (2023 challenge); class-average accuracy = accuracy of each of the "
          f"{n_class} classes, then their plain mean over the classes present (2024 challenge); 95% intervals "
          "bootstrap over images. Target metric: "
          f"`{TARGETS[metric]}` ({chosen}): the default sort, the leader and the comparisons are on it.", "",
          "**What the scores are.** Each section scores its entries on the images its heading names (the "
          "validation split, or out-of-fold over train + val for k-fold members). Where those images chose a "
          "model's epoch (checkpoint selection) or tuned parameters, its score is in-sample for that choice, so "
          "optimistic; a recipe that keeps its last epoch chose nothing there. 95% intervals: bootstrap over "
          "images, each resample keeping every class present (so the class average is always over the same "
          "classes). Of an ensemble only the weights and the decision rule are cross-fitted (out-of-fold over "
          "val), and only when k-fold CV ran; its members count as selected on val unless all kept their last "
          "epoch. The column *val score is* "
          "says this per entry; *decision* says how probabilities became predictions (argmax, or a rule fitted "
          "on val, e.g. logit adjustment with its tau per attribute). "
          "*train s (sum of epochs)* adds up per-epoch wall times (over all members for an ensemble); *img/s "
          "(median epoch)* is the median of per-epoch training throughput, so on a shared machine the two need "
          "not agree."]
    if not entries:
        (out / "leaderboard.csv").unlink(missing_ok=True)
        md += ["", "_No finished runs with scored validation probabilities yet._", "",
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
    md += ["", f"Dataset fingerprint `{fp}`, sorted by `{sort}`, target metric `{TARGETS[metric]}`. Entries are "
           "ranked and compared only with entries scored on the same images (the column *n*).", "",
           f"## Leaderboard: {describe_group(first, by_set[first])}", "", *missing_note(by_set[first], attributes),
           *few_images_note(by_set[first], class_names, attributes),
           render_leaderboard(df, attributes), "",
           "## Is the difference real?", "",
           f"Each entry against the leader on `{TARGETS[metric]}`, on the same images and like with like: "
           "plain-view scores with plain-view scores, TTA scores with TTA scores (the columns *views* and *TTA "
           "views* say which views each score used). Images are the independent units (errors on one image's "
           f"{n_attr} attributes are correlated): Δ has a paired bootstrap interval over images (per comparison, not "
           "adjusted); p is a paired sign-flip permutation test of each image's share of the difference "
           "(correct attributes for overall accuracy; for the class average, each right attribute weighted by "
           f"1 / ({n_class} x images of its class)) ({N_PERM:,} seeded random flips). The comparisons of one table "
           "with its leader are one family: their p-values are Holm-Bonferroni adjusted, and *different at 5%?* "
           "uses the adjusted p (chance of any false \"yes\" <= 5% per table). The leader was itself picked on "
           "these images, which favours it.", "", *render_comparisons(df, metric)]
    for key in rest:
        md += [f"## Leaderboard: {describe_group(key, by_set[key])}", "",
               "k-fold members and ensembles of them: every image scored by a model that did not train on it.", "",
               *missing_note(by_set[key], attributes), *few_images_note(by_set[key], class_names, attributes),
               render_leaderboard(frames[key], attributes), "",
               f"Against this table's leader on `{TARGETS[metric]}`, as above.",
               "", *render_comparisons(frames[key], metric)]
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
    if rp.curves(models, files / "curves.png"):
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
    extra, gallery_md = galleries(entries, list(dict.fromkeys([best.label] + ([gallery] if gallery else []))),
                                  runs_dir, files)
    md += ["## Per-class accuracy (recall)", "", render_per_class(ordered, class_names, attributes, extra), "",
           *gallery_md,
           "## Confusion matrices", ""]
    for e in ordered:
        if e.kind == "baseline":
            continue
        name = f"confusion-{slug(e.label)}.png"
        rp.confusion(e.extra["labels"], e.pred, class_names, files / name, e.label, attributes)
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
