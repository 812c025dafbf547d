#!/usr/bin/env bash
# Issue 40's real-data figures for reports/reference/seeds.md ("Real data" section): EfficientNet-Lite0, Lite1 and
# Lite2 from their ImageNet weights files, three seeds each at equal budget, on fashion-dev's 1000 val images.
#
#   bash scripts/seeds_reference.sh                      # DATA, WEIGHTS, WORK, SIZE, EPOCHS, SEEDS as below
#
# CPU time, measured 2026-12-07 on the idle 2-core CPU at the defaults (128 px, 4 epochs, 3 seeds): 53 minutes in
# all; a replica of Lite0 ~4 min, Lite1 ~5-6, Lite2 ~5.5-6 (train_time_s 240-412, 302-385, 325-360 s), the two
# ensembles, the report and the figures a few minutes. EPOCHS=8 about doubles it. Run it on an otherwise idle machine: the
# train times in run.json are only comparable then. Re-running resumes (finished replicas are skipped).
#
# What it does, each command as a user would type it:
#  1. bench.run --seeds 0,1,2 per model (one command per model: each has its own weights file), run `seeds`;
#  2. bench.ensemble --models tf_efficientnet_lite0 (the three Lite0 seeds: a deep ensemble) and the three backbones
#     at seed 0, both uniform weights, plain view, argmax (nothing fitted on val), overall accuracy;
#  3. bench.report (the leaderboard: one row per model over its seeds, seed-aware comparisons, "Seeds or backbones?");
#  4. the figures the issue asks for (python below, reading the replicas' val probabilities): each model's seed
#     spread against its image-only interval width; today's image-only test on every pair of seeds of one model,
#     both metrics; the seed-aware verdicts Lite1 vs Lite0 and Lite2 vs Lite1 beside today's test on seed 0; and the
#     ensembles' section of the leaderboard. Written to $WORK/seeds-figures.md (paste into seeds.md).
set -euo pipefail
data=${DATA:-../shared/fashion-dev}
weights=${WEIGHTS:-../shared/pretrained}
work=${WORK:-/tmp/seeds40}
size=${SIZE:-128} epochs=${EPOCHS:-4} seeds=${SEEDS:-0,1,2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
run() { echo "+ $*" >&2; "$@"; }
for m in 0 1 2; do
  run python -m bench.run --data "$data" --workdir "$work" --run seeds --models tf_efficientnet_lite$m \
    --pretrained "$weights/tf_efficientnet_lite$m.in1k.pth" --size "$size" --epochs "$epochs" --seeds "$seeds" \
    --no-progress --no-report
done
first=${seeds%%,*}
run python -m bench.ensemble --workdir "$work" --models tf_efficientnet_lite0 --name lite0-seeds \
  --weights uniform --tta plain --metric overall --out "$work/submission/lite0-seeds" --force --no-report
run python -m bench.ensemble --workdir "$work" --name lite-backbones --weights uniform --tta plain --metric overall \
  --runs "seeds/tf_efficientnet_lite0-seed$first,seeds/tf_efficientnet_lite1-seed$first,seeds/tf_efficientnet_lite2-seed$first" \
  --out "$work/submission/lite-backbones" --force --no-report
run python -m bench.report --workdir "$work" --metric overall
python - "$work" "$data" "$size" "$epochs" "$seeds" <<'EOF'
"""The figures of seeds.md's real-data section from the replicas in WORK/runs/seeds (see the script's header)."""
import itertools
import platform
import sys
from pathlib import Path

import numpy as np

from bench.artifacts import find_runs
from bench.metrics import TARGETS, image_parts, probs_to_pred, score
from bench.stats import bootstrap_ci, format_p, image_diff, seed_compare, sign_flip_p

work, data, size, epochs, seeds = sys.argv[1:]
runs = Path(work) / "runs"
reps = {}  # model -> seed -> (labels, plain-view predictions, class counts)
for a in find_runs(runs, ["seeds"], done_only=True):
    if a.meta.get("replica") and a.meta.get("kind", "model") == "model":
        z = a.load_probs("val")
        nc = tuple(a.meta["num_classes"])
        reps.setdefault(a.meta["replica"]["of"], {})[a.meta["replica"]["seed"]] = (z["labels"],
                                                                                     probs_to_pred(z["plain"], nc), nc)
models = sorted(reps)
short = {m: m.replace("tf_efficientnet_", "") for m in models}
NAMES = {"overall": "overall", "class": "class average"}


def parts(m, s, metric):
    labels, pred, nc = reps[m][s]
    return image_parts(labels, pred == labels, nc, metric)


def value(m, s, metric):
    labels, pred, nc = reps[m][s]
    return score(labels, pred, nc)[TARGETS[metric]]


out = [f"Measured by `bash scripts/seeds_reference.sh` (DATA={data}, SIZE={size}, EPOCHS={epochs}, SEEDS={seeds}; "
       f"{platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}); plain view, argmax, "
       f"val n = {len(next(iter(reps[models[0]].values()))[0])}.", "",
       "**Seed spread against the image-only interval** (`bench.run --seeds`; the width is each replica's bootstrap "
       "95% interval over images, averaged over its seeds):", "",
       "| model | metric | per seed | sd over seeds | image-only 95% width | seed sd / image sd |", "| --- | --- | --- | --- | --- | --- |"]
for m in models:
    for metric in ("overall", "class"):
        vals = [value(m, s, metric) for s in sorted(reps[m])]
        widths = [np.subtract(*bootstrap_ci(*parts(m, s, metric)[:1], den=parts(m, s, metric)[1])[::-1])
                  for s in sorted(reps[m])]
        sd, width = np.std(vals, ddof=1), float(np.mean(widths))
        out.append(f"| {short[m]} | {NAMES[metric]} | {' / '.join(f'{v:.4f}' for v in vals)} | {sd:.4f} | "
                   f"{width:.3f} | {sd / (width / 3.92):.2f} |")
out += ["", "**Today's image-only test on two seeds of one model** (paired sign-flip over images, 10,000 flips, "
        "unadjusted; every pair):", "",
        "| model | seeds | metric | Δ | sign-flip p | called different at 5%? |", "| --- | --- | --- | --- | --- | --- |"]
called = {"overall": [0, 0], "class": [0, 0]}
for m in models:
    for s, t in itertools.combinations(sorted(reps[m]), 2):
        for metric in ("overall", "class"):
            (na, den), (nb, _) = parts(m, t, metric), parts(m, s, metric)
            p = float(sign_flip_p(image_diff(na, nb, den), 10000))
            d = value(m, t, metric) - value(m, s, metric)
            called[metric][0] += p < 0.05
            called[metric][1] += 1
            out.append(f"| {short[m]} | {t} vs {s} | {NAMES[metric]} | {d:+.4f} | {format_p(p, 3)} | "
                       f"{'yes' if p < 0.05 else 'no'} |")
out += ["", "Called different: " + "; ".join(f"{NAMES[k]} {v[0]} of {v[1]} pairs" for k, v in called.items()) + ".",
        "", "**Seed-aware verdicts** (`bench/stats.py` seed_compare: t over seeds and images, the leaderboard's test "
        "between rows of replicas) beside today's image-only test on one seed each (seed "
        f"{min(reps[models[0]])}):", "",
        "| comparison | metric | Δ of seed means [95% CI] | p (seeds + images) | today: Δ, sign-flip p (1 seed each) |",
        "| --- | --- | --- | --- | --- |"]
for b, a in zip(models[1:], models[:-1]):
    for metric in ("overall", "class"):
        sb, sa = sorted(reps[b]), sorted(reps[a])
        pb, pa = [parts(b, s, metric) for s in sb], [parts(a, s, metric) for s in sa]
        sc = seed_compare([value(b, s, metric) for s in sb], [value(a, s, metric) for s in sa],
                          [x for x, _ in pb], [x for x, _ in pa], pb[0][1])
        p1 = float(sign_flip_p(image_diff(pb[0][0], pa[0][0], pb[0][1]), 10000))
        d1 = value(b, sb[0], metric) - value(a, sa[0], metric)
        out.append(f"| {short[b]} vs {short[a]} | {NAMES[metric]} | {sc['delta']:+.4f} [{sc['lo']:+.4f}, "
                   f"{sc['hi']:+.4f}] | {format_p(sc['p'], 3)} (df {sc['df']:.1f}) | {d1:+.4f}, p {format_p(p1, 3)} |")
board = (Path(work) / "reports/leaderboard.md").read_text()
if "### Seeds or backbones?" in board:
    section = board.split("### Seeds or backbones?", 1)[1].split("\n## ", 1)[0]
    out += ["", "**Seeds or backbones?** (the leaderboard's section, `python -m bench.report`):", section.strip()]
text = "\n".join(out) + "\n"
(Path(work) / "seeds-figures.md").write_text(text)
print(text)
print(f"written: {Path(work) / 'seeds-figures.md'}; the leaderboard: {Path(work) / 'reports/leaderboard.md'}")
EOF
