#!/usr/bin/env bash
# Issue #15's comparison of recipes by initialisation, on real data; writes OUT_RUNS/_report/leaderboard.md.
#   WEIGHTS=../shared/pretrained/tf_efficientnet_lite0.in1k.pth DATA=../shared/fashion-dev \
#     bash scripts/recipes_benchmark.sh                        # full size (224 px, 30 epochs): a GPU job
#   ... SIZE=96 EPOCHS=8 bash scripts/recipes_benchmark.sh     # reduced, for the CPU (DEVICE: default cuda if any)
# Rows: EfficientNet-Lite0 from ImageNet weights with the finetune recipe and with v0 (the first default), the
# same model from scratch (scratch recipe), ResNet-18 from scratch with the scratch recipe and with v0, and the
# plain loop of issue #15 (scripts/plain_loop.py, NOT the suite's trainer) for ResNet-18 and Lite0 from scratch and
# Lite0 from the weights, at the same size and epochs. JOBS=N runs N rows at once (on one GPU they share it: then
# the wall times are not the cost of a row alone). Each row's log: OUT_RUNS/_logs/ROW.log.
set -euo pipefail
weights=${WEIGHTS:?path to tf_efficientnet_lite0.in1k.pth}
data=${DATA:-${FASHION_DATA:?dataset root}}
runs=${OUT_RUNS:-runs-recipes}
size=${SIZE:-224} epochs=${EPOCHS:-30} jobs=${JOBS:-1} limit=${ROW_LIMIT:-0}  # ROW_LIMIT s per row; 0: none
device=${DEVICE:-$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
mkdir -p "$runs/_logs"
suite() { python -m bench.run --data "$data" --out "$runs" --size "$size" --epochs "$epochs" --device "$device" \
            --no-progress --no-report "$@"; }
plain() { local name=$1; shift
          python scripts/plain_loop.py --data "$data" --size "$size" --epochs "$epochs" --device "$device" \
            --out "$runs/_plain/$name/result.json" "$@"; }
export -f suite plain; export data runs size epochs device
rows=(  # name | command (longest first, so that lanes finish together)
  "lite0-v0-imagenet|suite --models tf_efficientnet_lite0 --pretrained $weights --recipe v0 --run v0-imagenet"
  "lite0-finetune|suite --models tf_efficientnet_lite0 --pretrained $weights --recipe finetune --run finetune"
  "lite0-scratch|suite --models tf_efficientnet_lite0 --pretrained none --recipe scratch --run scratch"
  "plain-lite0-imagenet|plain lite0-imagenet --model tf_efficientnet_lite0 --pretrained $weights"
  "plain-lite0-scratch|plain lite0-scratch --model tf_efficientnet_lite0"
  "resnet18-scratch|suite --models resnet18 --pretrained none --recipe scratch --run scratch"
  "resnet18-v0|suite --models resnet18 --pretrained none --recipe v0 --run v0-scratch"
  "plain-resnet18|plain resnet18 --model resnet18"
)
row() { local name=${1%%|*} cmd=${1#*|} t0=$SECONDS rc=0
        echo "=== $name start $(date +%T)"
        timeout "$limit" bash -c "$cmd" > "$runs/_logs/$name.log" 2>&1 || rc=$?  # timeout 0: no limit
        echo "=== $name end $(date +%T): exit $rc, $((SECONDS - t0)) s wall"; }
for r in "${rows[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  row "$r" &
done
wait
python -m bench.report --runs-dir "$runs" || true
