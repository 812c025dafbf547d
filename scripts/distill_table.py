"""The distillation table of reports/reference/distill.md from finished run folders and ensemble entries.

    python scripts/distill_table.py --baseline alone=runs/kd/tf_efficientnet_lite0 \
        --teacher ens=runs/_ensembles/kd3 --entry student=runs/kd-student/tf_efficientnet_lite0 ...

Each entry is NAME=DIR, DIR a run folder or an ensemble entry. Which of its val predictions are scored is decided by
bench/reporting/predictions.py, as for the leaderboard, and the tables compare like with like, one set of views at
a time (--views, default both):
  plain     the plain view: a model's argmax of its plain probabilities; an ensemble's decision rule on its
            members' plain probabilities (`pred_plain`, out-of-fold when the entry was cross-validated)
  declared  each entry at its declared views: a model's argmax of its plain + flip mean; an ensemble's rule at its
            --tta views (`pred`)
so a teacher with flip TTA is never set against students and a baseline scored without it. An entry without
predictions at a table's views (a model without flip probabilities; an ensemble entry written before entries stored
their plain-view twin) is left out of that table, which says so.
Every entry is scored on the same val images: overall and class-average accuracy with a 95% bootstrap interval;
every --entry against --baseline: the paired bootstrap interval of the difference and the suite's sign-flip p
(bench/stats.py, the leaderboard's test); and the share of the teacher's gain over the baseline it keeps, shown
only where that gain is positive with p < 0.05 (a share of a gain that may be zero is no figure).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: the bench package beside it

from bench.artifacts import ArtifactError, read_run  # noqa: E402
from bench.metrics import TARGETS, image_parts, score  # noqa: E402
from bench.reporting.predictions import shown  # noqa: E402
from bench.stats import bootstrap_ci, format_p, image_diff, paired_bootstrap, sign_flip_p  # noqa: E402

METRICS = ("overall", "class")
VIEWS = {"plain": "plain view (models: plain argmax; ensembles: their rule on the members' plain probabilities)",
         "declared": "declared views (models: plain + flip; ensembles: their --tta views)"}


def refuse(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load(spec: str):
    """(name, the entry's columns (bench/reporting/predictions.py Shown), val labels, num_classes); exit 2 naming
    the spec when it cannot be read."""
    name, eq, path = spec.partition("=")
    if not eq or not name or not path:
        refuse(f"{spec!r}: expected NAME=DIR (a run folder or an ensemble entry)")
    if path.endswith((":plain", ":flip", ":pred")):
        refuse(f"{spec!r}: NAME=DIR:KIND is gone: which predictions an entry shows is decided as for the "
               f"leaderboard, and every table compares like with like; pass NAME=DIR (--views picks the tables)")
    try:
        art = read_run(Path(path))
        probs = art.load_probs("val")
    except ArtifactError as e:
        refuse(f"{spec}: {e}")
    if "labels" not in probs:
        refuse(f"{spec}: {art.probs_path('val')} has no val labels")
    return name, shown(art.meta.get("kind", "model"), art.meta, probs), probs["labels"], \
        tuple(art.meta["num_classes"])


def column(columns, views: str):
    """The predictions of an entry's columns at `views` (plain or declared), or None where it has none there."""
    if views == "plain":
        return columns.main.pred if columns.main.views == "plain" else None
    return columns.tta.pred if columns.tta is not None else None


def table(rows, views: str, n_entries: int, labels, nc) -> None:
    """Print one set of views' tables: every entry's scores, then the comparisons with the baseline and the share
    of the teacher's gain kept. `rows`: (name, columns) with the baseline first and the teacher second."""
    preds = [(name, column(c, views)) for name, c in rows]
    print(f"\n## {VIEWS[views]}\n")
    left = [name for name, p in preds if p is None]
    if left:
        print(f"not in this table (no predictions at these views): {', '.join(left)}"
              + (" (a model without flip probabilities, or an ensemble entry made with `--tta plain` alone: its "
                 "plain-view table has it)" if views == "declared" else
                 " (an ensemble entry written before entries stored their plain-view predictions `pred_plain`: "
                 "rebuild it with `python -m bench.ensemble --name NAME --force` and the options it was made with)")
              + "\n")
    print("| entry | overall acc [95% CI] | class-average acc [95% CI] |")
    print("| --- | --- | --- |")
    for name, pred in preds:
        if pred is None:
            continue
        cells = []
        for m in METRICS:
            num, den = image_parts(labels, pred == labels, nc, m)
            lo, hi = bootstrap_ci(num, den=den)
            cells.append(f"{score(labels, pred, nc)[TARGETS[m]]:.4f} [{lo:.4f}, {hi:.4f}]")
        print(f"| {name} | " + " | ".join(cells) + " |")
    (base, base_pred), (teacher, teacher_pred) = preds[0], preds[1]
    if base_pred is None or teacher_pred is None:
        print(f"\nno comparisons at these views: {base if base_pred is None else teacher} has no predictions here")
        return
    print(f"\nagainst {base} (paired over the same images; sign-flip p two-sided, 10000 flips); "
          f"kept = (entry - {base}) / ({teacher} - {base})\n")
    print("| entry | metric | difference [95% CI] | p | kept of the teacher's gain |")
    print("| --- | --- | --- | ---: | ---: |")
    gains = {}  # metric -> the teacher's gain over the baseline, None when not significant (sign-flip p >= 0.05)
    for name, pred in preds[1:2 + n_entries]:
        if pred is None:
            continue
        for m in METRICS:
            num_e, den = image_parts(labels, pred == labels, nc, m)
            num_b, _ = image_parts(labels, base_pred == labels, nc, m)
            pb = paired_bootstrap(num_e, num_b, den=den)
            p = float(sign_flip_p(image_diff(num_e, num_b, den), 10000))
            if name == teacher:
                gains[m] = pb["delta"] if pb["delta"] > 0 and p < 0.05 else None
            # a share of a gain that is not there (not positive, or not told from zero) is no figure: say so
            kept = "-" if gains[m] is None else f"{pb['delta'] / gains[m]:.0%}"
            if name == teacher and gains[m] is None:  # why: below the baseline, or not told from it
                kept = ("- (the teacher is not above the baseline: no gain to keep)" if pb["delta"] <= 0 else
                        f"- (p {format_p(p, 3)} >= 0.05: no gain to keep)")
            print(f"| {name} | {m} | {pb['delta']:+.4f} [{pb['lo']:+.4f}, {pb['hi']:+.4f}] | {format_p(p, 3)} "
                  f"| {kept} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, metavar="NAME=DIR")
    ap.add_argument("--teacher", required=True, metavar="NAME=DIR")
    ap.add_argument("--entry", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--other", action="append", default=[], metavar="NAME=DIR", help="scored and shown, not compared")
    ap.add_argument("--views", choices=("plain", "declared", "both"), default="both",
                    help="which tables: the plain view, the declared views, or both (default)")
    a = ap.parse_args(argv)
    loaded = [load(s) for s in [a.baseline, a.teacher, *a.entry, *a.other]]
    labels, nc = loaded[0][2], loaded[0][3]
    for name, _, lab, _ in loaded:
        if lab.shape != labels.shape or (lab != labels).any():
            refuse(f"{name}: scored on other val images than {loaded[0][0]}")
    print(f"val n={len(labels)}; 95% bootstrap intervals (2000 resamples over images); each table compares every "
          f"entry at the same views")
    rows = [(name, columns) for name, columns, _, _ in loaded]
    for views in (("plain", "declared") if a.views == "both" else (a.views,)):
        table(rows, views, len(a.entry), labels, nc)


if __name__ == "__main__":
    main()
