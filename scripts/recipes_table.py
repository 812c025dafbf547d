"""Markdown rows for reports/reference/recipes.md from saved validation probabilities, with intervals.

Each ROW is LABEL=PATH, PATH a suite run's probs_val.npz or a plain-loop result .npz (both hold `plain`, `flip`,
`labels`); several PATHs joined by `+` are seeds of one row (each scored alone, then their mean and range). Each
--pair A:B (labels, or LABEL#i for the i-th seed of a row) is a paired comparison A - B on the same images.
    python scripts/recipes_table.py 'finetune=runs/finetune/m/probs_val.npz+runs/finetune-s1/m/probs_val.npz' \
        'plain=runs/_plain/x/result.npz' --pair finetune#0:plain
Intervals: bootstrap over images (2000 resamples, seed 0), every class kept in every resample (bench/stats.py).
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.data.predictions import DEFAULT_NUM_CLASSES as K  # noqa: E402
from bench.metrics import TARGETS, image_parts, probs_to_pred, score  # noqa: E402
from bench.stats import bootstrap_ci, paired_bootstrap  # noqa: E402

METRICS = ("overall", "class")


def load(path: str) -> dict:
    """Per view (plain, flip-TTA) and metric: (score, per-image parts for the bootstrap)."""
    d = np.load(path)
    y = d["labels"]
    out = {}
    for view, probs in (("plain", d["plain"]), ("tta", (d["plain"] + d["flip"]) / 2)):
        pred = probs_to_pred(probs, K)
        s = score(y, pred, K)
        out[view] = {m: (s[TARGETS[m]], image_parts(y, pred == y, K, m)) for m in METRICS}
    return out


def fmt_ci(cell) -> str:
    lo, hi = bootstrap_ci(cell[1][0], den=cell[1][1])
    return f"{cell[0]:.4f} [{lo:.3f}, {hi:.3f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows", nargs="+", help="LABEL=PATH[+PATH...]")
    p.add_argument("--pair", action="append", default=[], help="A:B, paired difference A - B (no TTA and flip-TTA)")
    a = p.parse_args()
    rows = {}
    for r in a.rows:
        label, paths = r.split("=", 1)
        rows[label] = [load(x) for x in paths.split("+")]
    print("| row | seeds | overall [95% CI] | class-average [95% CI] | flip-TTA overall | flip-TTA class-average |")
    print("| --- | ---: | --- | --- | --- | --- |")
    for label, runs in rows.items():
        if len(runs) == 1:
            r = runs[0]
            cells = [fmt_ci(r["plain"]["overall"]), fmt_ci(r["plain"]["class"]),
                     f"{r['tta']['overall'][0]:.4f}", f"{r['tta']['class'][0]:.4f}"]
        else:
            cells = []
            for view, m in (("plain", "overall"), ("plain", "class"), ("tta", "overall"), ("tta", "class")):
                v = [r[view][m][0] for r in runs]
                cells.append(f"mean {np.mean(v):.4f} ({', '.join(f'{x:.4f}' for x in v)})")
        print(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
    if a.pair:
        print("\n| A - B (same 1000 images) | overall Δ [95% CI] | class-average Δ [95% CI] | flip-TTA overall Δ "
              "[95% CI] |")
        print("| --- | --- | --- | --- |")
    for pair in a.pair:
        sides = []
        for side in pair.split(":"):
            label, _, i = side.partition("#")
            sides.append(rows[label][int(i or 0)])
        cells = []
        for view, m in (("plain", "overall"), ("plain", "class"), ("tta", "overall")):
            (na, den), (nb, _) = sides[0][view][m][1], sides[1][view][m][1]
            d = paired_bootstrap(na, nb, den=den)
            cells.append(f"{d['delta']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]")
        print(f"| {pair} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
