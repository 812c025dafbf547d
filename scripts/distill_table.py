"""The distillation table of reports/reference/distill.md from finished run folders and ensemble entries.

    python scripts/distill_table.py --baseline alone=runs/kd/tf_efficientnet_lite0:plain \
        --teacher ens=runs/_ensembles/kd3:pred --entry student=runs/kd-student/tf_efficientnet_lite0:plain ...

Each entry is NAME=DIR:KIND, DIR a run folder or an ensemble entry, KIND which val predictions are scored:
  plain   argmax of the run's plain-view probabilities (probs_val.npz `plain`)
  flip    argmax of the mean of its plain and flip views (flip TTA)
  pred    the ensemble entry's stored decided predictions (`pred`: at its views, its decision rule; out-of-fold when
          the entry was cross-validated, see its run.json val_scoring)
Every entry is scored on the same val images: overall and class-average accuracy with a 95% bootstrap interval;
every --entry against --baseline: the paired bootstrap interval of the difference and the suite's sign-flip p
(bench/stats.py, the leaderboard's test); and the share of the teacher's gain over the baseline it keeps, shown
only where that gain is positive with p < 0.05 (a share of a gain that may be zero is no figure).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.metrics import TARGETS, image_parts, probs_to_pred, score
from bench.stats import bootstrap_ci, image_diff, paired_bootstrap, sign_flip_p

METRICS = ("overall", "class")


def load(spec: str):
    name, _, rest = spec.partition("=")
    path, _, kind = rest.rpartition(":")
    folder = Path(path)
    meta = json.loads((folder / "run.json").read_text())
    with np.load(folder / "probs_val.npz") as z:
        arrays = {k: z[k] for k in z.files}
    nc = tuple(meta["num_classes"])
    if kind == "plain":
        pred = probs_to_pred(arrays["plain"], nc)
    elif kind == "flip":
        pred = probs_to_pred((arrays["plain"] + arrays["flip"]) / 2, nc)
    elif kind == "pred":
        pred = arrays["pred"]
    else:
        raise SystemExit(f"{spec}: KIND must be plain, flip or pred")
    return name, pred, arrays["labels"], nc


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--entry", action="append", default=[])
    ap.add_argument("--other", action="append", default=[], help="scored and shown, not compared")
    a = ap.parse_args(argv)
    rows = [load(s) for s in [a.baseline, a.teacher, *a.entry, *a.other]]
    labels, nc = rows[0][2], rows[0][3]
    for name, _, lab, _ in rows:
        if not np.array_equal(lab, labels):
            raise SystemExit(f"{name}: scored on other val images than {rows[0][0]}")
    scores = {name: score(labels, pred, nc) for name, pred, _, _ in rows}
    print(f"val n={len(labels)}; 95% bootstrap intervals (2000 resamples over images)\n")
    print("| entry | overall acc [95% CI] | class-average acc [95% CI] |")
    print("| --- | --- | --- |")
    for name, pred, _, _ in rows:
        cells = []
        for m in METRICS:
            num, den = image_parts(labels, pred == labels, nc, m)
            lo, hi = bootstrap_ci(num, den=den)
            cells.append(f"{scores[name][TARGETS[m]]:.4f} [{lo:.4f}, {hi:.4f}]")
        print(f"| {name} | " + " | ".join(cells) + " |")
    base, teacher = rows[0], rows[1]
    print(f"\nagainst {base[0]} (paired over the same images; sign-flip p two-sided, 10000 flips); "
          f"kept = (entry - {base[0]}) / ({teacher[0]} - {base[0]})\n")
    print("| entry | metric | difference [95% CI] | p | kept of the teacher's gain |")
    print("| --- | --- | --- | ---: | ---: |")
    gains = {}  # metric -> the teacher's gain over the baseline, None when not significant (sign-flip p >= 0.05)
    for name, pred, _, _ in rows[1:2 + len(a.entry)]:
        for m in METRICS:
            num_e, den = image_parts(labels, pred == labels, nc, m)
            num_b, _ = image_parts(labels, base[1] == labels, nc, m)
            pb = paired_bootstrap(num_e, num_b, den=den)
            p = float(sign_flip_p(image_diff(num_e, num_b, den), 10000))
            if name == teacher[0]:
                gains[m] = pb["delta"] if pb["delta"] > 0 and p < 0.05 else None
            # a share of a gain that is not there (not positive, or not told from zero) is no figure: say so
            kept = "-" if gains[m] is None else f"{pb['delta'] / gains[m]:.0%}"
            if name == teacher[0] and gains[m] is None:
                kept = f"- (p {p:.2f}: no gain to keep)"
            print(f"| {name} | {m} | {pb['delta']:+.4f} [{pb['lo']:+.4f}, {pb['hi']:+.4f}] | {p:.4f} | {kept} |")


if __name__ == "__main__":
    main()
