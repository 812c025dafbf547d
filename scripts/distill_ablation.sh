#!/usr/bin/env bash
# Issue #37's measurement: does the student keep the ensemble's gain once its targets are cross-fitted, consistent
# with its views, mixed, started from a trained Lite0 and given the unlabelled test images? One mechanism added at a
# time, each against Lite0 alone at the same total epochs, seeds 0, 1, 2; prints the pooled paired difference over
# the three seeds (sign-flip p over images x seeds) and the share of the teacher's gain kept, at the plain view and
# at the declared views (like with like: bench/reporting/predictions.py decides both, as for the leaderboard and
# scripts/distill_table.py), for overall accuracy, the class average (argmax) and the class average with each
# model's fitted rule (bench.ensemble --metric class entries).
#
#   bash scripts/distill_ablation.sh                    # defaults below; re-running resumes and skips what is done
#   K=3 EPOCHS=12 VIEWS=12 WORK=/work/d37k3 bash scripts/distill_ablation.sh
#   STAGE=members bash scripts/distill_ablation.sh      # only the members, k-fold members and Lite0-alone runs
#   STEPS=a1v EPOCHS=8 bash scripts/distill_ablation.sh # in-sample steps only (a1, a1v): no k-fold members trained
#   STAGE=table bash scripts/distill_ablation.sh        # only the tables, from finished runs
#   DATA=/tmp/demo SIZE=32 EPOCHS=2 INIT_EPOCHS=1 K=2 VIEWS=2 SEEDS="0 1" EXTRA="--batch-size 16" WORK=/tmp/abl \
#     bash scripts/distill_ablation.sh                  # a smoke run of the whole pipeline on tiny data (minutes)
#
# Rows (seed s in SEEDS; the teacher's members are trained once, seed 0, as in reports/reference/distill.md):
#   alone-s   Lite0 alone, EPOCHS epochs (seed 0 is the member kd/tf_efficientnet_lite0)
#   a1-s      in-sample cached targets (--mode cached, the CPU default until views measured better): teacher kd3 =
#             uniform mean of the Lite0/1/2 members
#   a2-s      cross-fitted: teacher cf3 = the same three models cross-fitted over train (--folds K --pool train),
#             cached targets
#   a3-s      + consistent views: --mode views --views VIEWS
#   a4-s      + mixup: --mixup MIXUP
#   a5-s      + init: the student starts from a Lite0 fine-tuned for INIT_EPOCHS epochs (init-s) and distils for
#             EPOCHS - INIT_EPOCHS epochs, so its weights saw EPOCHS epochs in all, as Lite0 alone did
#   a6-s      + unlabelled test images (--unlabelled test: transductive, the row says so)
#   a1v-s     off the chain (not in the default STEPS): in-sample targets with consistent views, a1 + --mode views
#             --views VIEWS from kd3; function matching's own setting (its teacher trained on the student's images)
# Each student's share is of the gain of the teacher it learned from (kd3 for a1 and a1v, cf3 for a2-a6), over the same
# Lite0-alone seeds; a share is printed only where that gain is positive with pooled p < 0.05.
#
# CPU time (2 cores, idle; from reports/reference/distill.md: an 8-epoch Lite0 student with cached targets ~22 min,
# 4.8 of them caching 3 members x 2 views x 4000 images; Lite0 alone ~15-17 min; Lite1/Lite2 at 128 px assumed
# ~1.5x/2.2x Lite0 by their FLOPs), at EPOCHS 8, K 5, VIEWS 8:
#   members Lite0/1/2 ~80 min; Lite0 alone seeds 1, 2 ~35 min;
#   cross-fitted members: K fold models per member, each on (K-1)/K of train: ~(K-1) x 80 min = ~320 min (K 3: 160,
#     K 2: 80; the first fold's train_time_s in RUNS/cf/<model>/fold-0/run.json measures it after one fold);
#   per seed: a1 ~22, a2 ~18 (stored out-of-fold targets: no teacher pass), a3 and a4 ~37 each (VIEWS teacher passes
#     ~19 min + training), a5 ~25 (INIT_EPOCHS Lite0 ~9 + views copied from a4 + EPOCHS-INIT_EPOCHS epochs),
#     a6 ~40 (5000 images: views ~24 + training) = ~180 min; three seeds ~540 min;
#   in all ~16 h at K 5, ~13 h at K 3, ~12 h at K 2 (+ a few minutes of bench.ensemble class entries). Longer
#   schedules scale the training parts with EPOCHS; the views' labelling scales with VIEWS.
# Measured (2026-12-07, idle, reports/reference/distill.md) at EPOCHS 4, K 3, VIEWS 4: cross-fitted members 37 min;
#   three seeds of a2 16 min, a3 23, a4 23, a5 16 (init runs included), a6 24; the table 2 min (the kd members,
#   Lite0 alone and a1 came from an earlier run: ~15, ~8 and ~16 min).
# At K 5 (same settings): cross-fitted members 69 min (fold models 3.7-3.9x a member's training); three seeds of a2
#   15 min, a3 21, a1v 22.
# At EPOCHS 8, VIEWS 8, STEPS=a1v (no cross-fitted members): 1 h 36 min in all; members 10.0, 12.0, 10.8 min, Lite0
#   alone 7.8 and 8.4 min per seed, a1v 13.6-16.1 min per seed (about 5 of them labelling the views).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${DATA:-../shared/fashion-dev}
weights=${WEIGHTS:-../shared/pretrained}
work=${WORK:-runs-distill-ablation}
size=${SIZE:-128} epochs=${EPOCHS:-8} k=${K:-5} views=${VIEWS:-8} mixup=${MIXUP:-0.2}
init_epochs=${INIT_EPOCHS:-$((epochs / 2))}
seeds=${SEEDS:-0 1 2}
steps=${STEPS:-a1 a2 a3 a4 a5 a6}  # the students stage runs these steps, each for every seed, in this order
teacher_of() { case $1 in a1 | a1v) echo kd3 ;; *) echo cf3 ;; esac; }  # the one place a step's teacher is decided
cf_steps=$(for a in $steps; do [ "$(teacher_of "$a")" = kd3 ] || echo "$a"; done)  # steps that learn from cf3
stage=${STAGE:-all}  # all | members | students | table
device=${DEVICE:-cpu}
read -r -a extra <<< "${EXTRA:-}"  # more flags for every bench.run and bench.distill (e.g. --batch-size 16)
L0=tf_efficientnet_lite0
W=(--workdir "$work")
runs="$work/runs"
mkdir -p "$work/_logs"
log() { echo "=== $(date +%T) $*"; }
weights_of() { echo "$weights/$1.in1k.pth"; }
train() {  # RUN MODEL [flags]: one bench.run, logged; skipped by bench.run itself when finished
  local run=$1 model=$2; shift 2
  log "run $run/$model $*"
  python -m bench.run --data "$data" "${W[@]}" --run "$run" --models "$model" --pretrained "$(weights_of "$model")" \
    --size "$size" --device "$device" --no-progress --no-report ${extra[@]+"${extra[@]}"} "$@" \
    > "$work/_logs/$run-$model.log" 2>&1
}
student() {  # RUN TEACHER [flags]
  local run=$1 teacher=$2; shift 2
  log "distill $run from $teacher $*"
  python -m bench.distill "${W[@]}" --teacher "$teacher" --student "$L0" --pretrained "$(weights_of "$L0")" \
    --size "$size" --device "$device" --run "$run" --no-progress --no-report ${extra[@]+"${extra[@]}"} "$@" \
    > "$work/_logs/$run.log" 2>&1
}
entry() {  # NAME RUNS [flags]: an ensemble entry, once
  local name=$1 members=$2; shift 2
  [ -f "$runs/_ensembles/$name/run.json" ] && return 0
  log "ensemble $name = $members $*"
  python -m bench.ensemble "${W[@]}" --runs "$members" --name "$name" --out "$work/submission/$name" --no-report \
    "$@" > "$work/_logs/ensemble-$name.log" 2>&1
}

if [ "$stage" = all ] || [ "$stage" = members ]; then
  for m in tf_efficientnet_lite0 tf_efficientnet_lite1 tf_efficientnet_lite2; do
    train kd "$m" --epochs "$epochs" --seed 0
  done
  for s in $seeds; do [ "$s" = 0 ] || train "alone-s$s" "$L0" --epochs "$epochs" --seed "$s"; done
  entry kd3 kd --tta plain,flip --weights uniform --metric overall
  if [ -n "$cf_steps" ]; then  # the expensive part: only when a step learns from cf3
    for m in tf_efficientnet_lite0 tf_efficientnet_lite1 tf_efficientnet_lite2; do
      train cf "$m" --epochs "$epochs" --seed 0 --folds "$k" --pool train
    done
    entry cf3 cf --tta plain,flip --weights uniform --metric overall
  fi
fi

if [ "$stage" = all ] || [ "$stage" = students ]; then
  # step-major: every step gets all its seeds before the next starts, so a run cut short leaves whole rows
  for a in $steps; do
    for s in $seeds; do
      case $a in
        a1) student "a1-s$s" kd3 --epochs "$epochs" --seed "$s" --mode cached ;;
        a1v) student "a1v-s$s" kd3 --epochs "$epochs" --seed "$s" --mode views --views "$views" ;;
        a2) student "a2-s$s" cf3 --epochs "$epochs" --seed "$s" --mode cached ;;
        a3) student "a3-s$s" cf3 --epochs "$epochs" --seed "$s" --mode views --views "$views" ;;
        a4) student "a4-s$s" cf3 --epochs "$epochs" --seed "$s" --mode views --views "$views" --mixup "$mixup" ;;
        a5) train "init-s$s" "$L0" --epochs "$init_epochs" --seed "$s"
            # the same teacher, images, views, seed and mixup as a4: its labelled views are reused (their key is
            # checked)
            mkdir -p "$runs/a5-s$s/$L0"
            [ -f "$runs/a5-s$s/$L0/teacher_views.npz" ] || cp "$runs/a4-s$s/$L0/teacher_views.npz" "$runs/a5-s$s/$L0/"
            student "a5-s$s" cf3 --epochs "$((epochs - init_epochs))" --seed "$s" --mode views --views "$views" \
              --mixup "$mixup" --init "init-s$s/$L0" ;;
        a6) train "init-s$s" "$L0" --epochs "$init_epochs" --seed "$s"
            student "a6-s$s" cf3 --epochs "$((epochs - init_epochs))" --seed "$s" --mode views --views "$views" \
              --mixup "$mixup" --init "init-s$s/$L0" --unlabelled test ;;
        *) echo "unknown step $a (STEPS takes a1 .. a6, a1v)" >&2; exit 2 ;;
      esac
    done
  done
fi

alone() { if [ "$1" = 0 ]; then echo "kd/$L0"; else echo "alone-s$1/$L0"; fi; }
if [ "$stage" = all ] || [ "$stage" = table ]; then
  # the class-average rule of every entry: logit adjustment, tau fitted by 5-fold CV on val, scored out of fold
  entry kd3-class kd --tta plain,flip --weights uniform --metric class
  [ -z "$cf_steps" ] || entry cf3-class cf --tta plain,flip --weights uniform --metric class
  for s in $seeds; do
    entry "alone-s$s-class" "$(alone "$s")" --metric class
    for a in $steps; do entry "$a-s$s-class" "$a-s$s" --metric class; done
  done
  {  # step<TAB>teacher dir<TAB>baseline dir<TAB>student dir<TAB>the full-data ensemble kd3's dir, one line per seed
    for s in $seeds; do
      for a in $steps; do
        t=$(teacher_of "$a")
        printf '%s\t%s\t%s\t%s\t%s\n' "$a" "$runs/_ensembles/$t" "$runs/$(alone "$s")" "$runs/$a-s$s/$L0" \
          "$runs/_ensembles/kd3"
        printf '%s (rule)\t%s\t%s\t%s\t%s\n' "$a" "$runs/_ensembles/$t-class" "$runs/_ensembles/alone-s$s-class" \
          "$runs/_ensembles/$a-s$s-class" "$runs/_ensembles/kd3-class"
      done
    done
  } > "$work/pairs.tsv"
  python - "$work/pairs.tsv" <<'EOF' | tee "$work/ablation.md"
"""Pooled over seeds: per step, the mean over seeds of (student - Lite0 alone) and of (teacher - Lite0 alone), each
with the sign-flip p over every (seed, image) share of the difference (bench.stats.image_diff: the shares of one seed
sum to its difference, so flipping them tests the pooled mean; it counts image noise only), the student's p counting
retraining too (bench.stats.seed_compare, as the leaderboard compares replica rows: the seed variance of both rows plus
the image variance without its retraining part), and kept = student / teacher where the teacher's pooled gain is
positive with (image) p < 0.05. The teacher is one set of members (seed 0): its retraining noise is not counted.
"kept of kd3" is the same share of the full-data ensemble's gain (kd3: the members trained on all of train, the
ensemble a user has and cannot submit); for a2-a6 the teacher is the cross-fitted cf3, whose val predictions come
from fold models that each saw (K-1)/K of train, so the two shares differ. Which predictions an entry shows at each
set of views: scripts/distill_table.py (`column`, from bench/reporting/predictions.py)."""
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, "scripts")
from distill_table import column, load  # noqa: E402
from bench.metrics import TARGETS, image_parts, score  # noqa: E402
from bench.stats import format_p, image_diff, seed_compare, sign_flip_p  # noqa: E402

steps = defaultdict(list)
for line in open(sys.argv[1]):
    step, teacher, base, student, full = line.rstrip("\n").split("\t")
    steps[step].append([load(f"{n}={d}") for n, d in
                        (("teacher", teacher), ("alone", base), ("student", student), ("kd3", full))])
print("| step | views | metric | student - alone, pooled (per seed) | p, images | p, seeds + images "
      "| teacher - alone, pooled | p, images | kept | kd3 - alone, pooled | p, images | kept of kd3 |")
print("| --- | --- | --- | --- | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: |")
for step, seeds in steps.items():
    metrics = ("class",) if step.endswith("(rule)") else ("overall", "class")
    for views in ("plain", "declared"):
        for m in metrics:
            d_s, d_t, d_f, nums_s, nums_b = [], [], [], [], []
            vals = {"t": [], "b": [], "s": [], "f": []}  # per seed, each model's metric
            missing = False
            for (_, t, labels, nc), (_, b, lb, _), (_, s, ls, _), (_, f, lf, _) in seeds:
                preds = [column(x, views) for x in (t, b, s, f)]
                if any(p is None for p in preds) or any((x != labels).any() for x in (lb, ls, lf)):
                    missing = True
                    break
                pt, pb, ps, pf = preds
                num = {k: image_parts(labels, p == labels, nc, m) for k, p in (("t", pt), ("b", pb), ("s", ps),
                                                                               ("f", pf))}
                den = num["b"][1]
                d_s.append(image_diff(num["s"][0], num["b"][0], den))
                d_t.append(image_diff(num["t"][0], num["b"][0], den))
                d_f.append(image_diff(num["f"][0], num["b"][0], den))
                for k, p in (("t", pt), ("b", pb), ("s", ps), ("f", pf)):
                    vals[k].append(score(labels, p, nc)[TARGETS[m]])
                nums_s.append(num["s"][0])
                nums_b.append(num["b"][0])
            if missing:
                print(f"| {step} | {views} | {m} | no predictions at these views (or other val images) |"
                      + " |" * 8)
                continue
            diffs = {k: np.array(vals[k]) - np.array(vals["b"]) for k in ("s", "t", "f")}  # per seed, vs alone
            ds, dt, df = (float(diffs[k].mean()) for k in ("s", "t", "f"))
            ps, pt, pf = (float(sign_flip_p(np.concatenate(x), 10000)) for x in (d_s, d_t, d_f))
            kept = f"{ds / dt:.0%}" if dt > 0 and pt < 0.05 else "- (no gain to keep)"
            kept_f = f"{ds / df:.0%}" if df > 0 and pf < 0.05 else "- (no gain to keep)"
            each = ", ".join(f"{x:+.4f}" for x in diffs["s"])
            # the same images and labels for every seed (checked above), so one den serves every replica
            seeds_p = seed_compare(vals["s"], vals["b"], nums_s, nums_b, den)["p"]
            print(f"| {step} | {views} | {m} | {ds:+.4f} ({each}) | {format_p(ps)} | {format_p(seeds_p)} | {dt:+.4f} "
                  f"| {format_p(pt)} | {kept} | {df:+.4f} | {format_p(pf)} | {kept_f} |")
EOF
fi
