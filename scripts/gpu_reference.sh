#!/usr/bin/env bash
# Reference measurements for reports/reference/ on the GPU machine. From the project root, after
# ../shared/device-prep.sh here (data + optuna wheels), each device call runs one or more stages:
#   source .device/env.sh && bash scripts/gpu_reference.sh tests speed   # cuda test tier + bench.speed table
#   source .device/env.sh && bash scripts/gpu_reference.sh zoo           # 5 backbones x 50 epochs + ensemble
#   source .device/env.sh && bash scripts/gpu_reference.sh tune          # 50-trial ResNet-18 study, 30 epochs each
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
    *) echo "unknown stage $stage (tests | speed | zoo | tune)" >&2; exit 2 ;;
  esac
done
echo "=== end $(date +%T)" | tee -a "$out/stages.log"
