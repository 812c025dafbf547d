#!/usr/bin/env bash
# Issue #15's comparison of recipes by initialisation, on real data; writes OUT_RUNS/_report/leaderboard.md.
#   WEIGHTS=../shared/pretrained/tf_efficientnet_lite0.in1k.pth DATA=../shared/fashion-dev \
#     bash scripts/recipes_benchmark.sh                       # full size (224 px), recipe epochs: a GPU job
#   ... EXTRA="--size 96 --epochs 8" bash scripts/recipes_benchmark.sh   # reduced, for the CPU
# Rows: EfficientNet-Lite0 from ImageNet weights with the finetune recipe and with v0 (the first default), the
# same model from scratch (scratch recipe), and ResNet-18 from scratch with the scratch recipe and with v0.
set -euo pipefail
weights=${WEIGHTS:?path to tf_efficientnet_lite0.in1k.pth}
data=${DATA:-${FASHION_DATA:?dataset root}}
runs=${OUT_RUNS:-runs-recipes}
extra=${EXTRA:-}
common="--data $data --out $runs --no-progress --no-report $extra"
run() { echo "=== $* $(date +%T)"; /usr/bin/time -f "    %e s wall" python -m bench.run $common "$@"; }
run --models tf_efficientnet_lite0 --pretrained "$weights" --recipe finetune --run finetune
run --models tf_efficientnet_lite0 --pretrained "$weights" --recipe v0 --run v0-imagenet
run --models tf_efficientnet_lite0 --pretrained none --recipe scratch --run scratch
run --models resnet18 --pretrained none --recipe scratch --run scratch
run --models resnet18 --pretrained none --recipe v0 --run v0-scratch
python -m bench.report --runs-dir "$runs"
