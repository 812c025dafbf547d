#!/usr/bin/env bash
# Reference measurements for reports/reference/ on the GPU machine. From the project root, after
# ../shared/device-prep.sh here (data + optuna wheels), each device call runs one or more stages:
#   source .device/env.sh && bash scripts/gpu_reference.sh tests speed   # cuda test tier + bench.speed table
#   source .device/env.sh && bash scripts/gpu_reference.sh zoo           # 5 backbones x 50 epochs + ensemble
#   source .device/env.sh && bash scripts/gpu_reference.sh tune          # 50-trial ResNet-18 study, 30 epochs each
#   source .device/env.sh && bash scripts/gpu_reference.sh lite distill  # #38 items 5, 6 (device-prep.sh pretrained)
# lite: EfficientNet-Lite0/1/2 at 224/240/260 px, finetune recipe, from the weights in $FASHION_PRETRAINED (those
# present: device-prep.sh pretrained carries Lite0, `weights` adds Lite1/Lite2 for a second call on the same warm
# machine, which keeps runs/), then the ensemble entries lite3 (overall) and lite3-class (class average).
# distill: Lite0 students of lite3 at 224 px, --mode online and --mode views, DISTILL_EPOCHS (default: the recipe's
# 30) each, and a table of epoch seconds and val scores against the plain Lite0 run (target: online < 1.5x).
# Logs land in $OUT (the device tool brings them back): a few files, one reports tarball per stage.
# EXTRA passes flags to every training command (e.g. EXTRA="--epochs 1 --size 32" for a dry run on a CPU);
# SPEED_COMPILE picks the compile settings bench.speed measures (default "off,on").
set -euo pipefail
out=${OUT:-/tmp/gpu-reference}
mkdir -p "$out"
extra=${EXTRA:-}
python - <<'PY' >> "$out/env.txt"
import torch, timm, platform
try:
    import optuna; ov = optuna.__version__
except ImportError:
    ov = "not installed"
dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
print(f"device {dev}; torch {torch.__version__}; timm {timm.__version__}; optuna {ov}; python {platform.python_version()}")
PY
for stage in "$@"; do
  echo "=== $stage $(date +%T)" | tee -a "$out/stages.log"
  case "$stage" in
    tests)
      python -m pytest -o addopts="" -q -m cuda tests/test_cuda.py -p no:cacheprovider 2>&1 | tee "$out/cuda-tests.log" || true ;;
    speed)
      python -m bench.speed --models resnet50,effb3 --compile "${SPEED_COMPILE:-off,on}" --out "$out" 2>&1 | tee "$out/speed.log" ;;
    zoo)
      { time python -m bench.run --models resnet18,resnet50,vgg16,effb3,effv2s --epochs 50 --no-progress $extra; } 2>&1 | tee "$out/zoo.log"
      python -m bench.ensemble --force --out submission 2>&1 | tee "$out/ensemble.log"
      tar czf "$out/zoo-reports.tgz" reports runs/*/*/run.json runs/*/*/history.csv ;;
    tune)
      { time python -m bench.tune --model resnet18 --trials 50 --epochs 30 --no-progress $extra; } 2>&1 | tee "$out/tune.log"
      tar czf "$out/tune-reports.tgz" reports ;;
    lite)
      : "${FASHION_PRETRAINED:?no weights: run ../shared/device-prep.sh pretrained and carry .device}"
      n=0
      for ms in tf_efficientnet_lite0:224 tf_efficientnet_lite1:240 tf_efficientnet_lite2:260; do
        m=${ms%%:*} w="$FASHION_PRETRAINED/${ms%%:*}.in1k.pth"
        [ -f "$w" ] || { echo "lite: no $w, $m skipped" | tee -a "$out/lite.log"; continue; }
        { time python -m bench.run --run lite --models "$m" --pretrained "$w" --size "${ms##*:}" --no-progress \
            --no-report $extra; } 2>&1 | tee -a "$out/lite.log"
        n=$((n + 1))
      done
      if [ "$n" -ge 2 ]; then
        # the teacher as the CPU measurement's kd3 (reports/reference/distill.md): uniform mean, plain + flip
        python -m bench.ensemble --runs lite --name lite3 --tta plain,flip --weights uniform --metric overall \
          --out submission/lite3 --force --no-report 2>&1 | tee "$out/lite-ensemble.log"
        python -m bench.ensemble --runs lite --name lite3-class --metric class --out submission/lite3-class \
          --force 2>&1 | tee -a "$out/lite-ensemble.log"
      else
        python -m bench.report 2>&1 | tail -3 >> "$out/lite.log"
      fi
      tar czf "$out/lite-reports.tgz" reports runs/lite/*/run.json runs/lite/*/history.csv ;;
    distill)
      [ -f runs/_ensembles/lite3/run.json ] || { echo "distill: no entry lite3 (run lite first)" >&2; exit 2; }
      for mode in online views; do
        { time python -m bench.distill --teacher lite3 --student tf_efficientnet_lite0 --mode "$mode" \
            --pretrained "$FASHION_PRETRAINED/tf_efficientnet_lite0.in1k.pth" --size 224 --run "kd-$mode" \
            ${DISTILL_EPOCHS:+--epochs "$DISTILL_EPOCHS"} --no-progress --no-report $extra; } 2>&1 \
          | tee "$out/distill-$mode.log"
      done
      python - <<'PY' 2>&1 | tee "$out/distill-table.md"
"""Epoch seconds (median over epochs, history.csv) and val scores of the distilled Lite0s against the plain one."""
from pathlib import Path

import pandas as pd

from bench.artifacts import ArtifactError, read_run

rows = {"plain Lite0": "runs/lite/tf_efficientnet_lite0", "online student": "runs/kd-online/tf_efficientnet_lite0",
        "views student": "runs/kd-views/tf_efficientnet_lite0"}
base = None  # the plain Lite0's epoch seconds: every ratio is against it
unreadable = []
print("| model | epochs | epoch s (median) | x plain | val overall | val class average | train s (run.json) |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for name, d in rows.items():
    art = None
    try:
        art = read_run(Path(d)) if (Path(d) / "run.json").exists() else None
    except ArtifactError as e:  # an unreadable run.json: the row shows as unfinished, the reason below the table
        unreadable.append(str(e))
    if art is None or not art.done:
        print(f"| {name} | not finished | | | | | |")
        continue
    h, meta = pd.read_csv(Path(d) / "history.csv"), art.meta
    sec = float(h["epoch_s"].median())
    base = sec if name == "plain Lite0" else base
    ratio = f"{sec / base:.2f}" if base else "- (no plain run)"
    print(f"| {name} | {len(h)} | {sec:.2f} | {ratio} | {meta['val']['overall_acc']:.4f} "
          f"| {meta['val']['class_avg_acc']:.4f} | {meta.get('train_time_s', float('nan')):.0f} |")
for e in unreadable:
    print(f"\n{e}")
PY
      tar czf "$out/distill-runs.tgz" runs/kd-*/*/run.json runs/kd-*/*/history.csv ;;
    *) echo "unknown stage $stage (tests | speed | zoo | tune | lite | distill)" >&2; exit 2 ;;
  esac
done
echo "=== end $(date +%T)" | tee -a "$out/stages.log"
