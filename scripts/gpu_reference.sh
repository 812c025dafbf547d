#!/usr/bin/env bash
# Reference measurements for reports/reference/, one device call per stage (each meant to stay under 10 minutes
# on one H100). From the project root on the GPU machine, after ../shared/device-prep.sh here:
#   source .device/env.sh && bash scripts/gpu_reference.sh speed        # bench.speed table
#   source .device/env.sh && bash scripts/gpu_reference.sh zoo          # 5 backbones x 50 epochs + ensemble
#   source .device/env.sh && bash scripts/gpu_reference.sh tune         # 50-trial ResNet-18 study
# Results land in $OUT (the device tool brings them back) as a few files: logs and one reports tarball.
# EXTRA passes flags to every training command (e.g. EXTRA="--epochs 1 --size 32" for a dry run on a CPU).
set -euo pipefail
out=${OUT:-/tmp/gpu-reference}
mkdir -p "$out"
extra=${EXTRA:-}
python - <<'PY' > "$out/env.txt"
import torch, timm, optuna, platform
dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
print(f"device {dev}; torch {torch.__version__}; timm {timm.__version__}; optuna {optuna.__version__}; python {platform.python_version()}")
PY
case "${1:?stage: speed | zoo | tune}" in
  speed)
    python -m bench.speed --models resnet50,effb3 --out "$out" 2>&1 | tee "$out/speed.log" ;;
  zoo)
    { time python -m bench.run --models resnet18,resnet50,vgg16,effb3,effv2s --epochs 50 --no-progress $extra; } 2>&1 | tee "$out/zoo.log"
    python -m bench.run --models resnet50 --recipe fashionnet --no-progress $extra 2>&1 | tee -a "$out/zoo.log"
    python -m bench.run --models effb3 --recipe effb3-300 --no-progress $extra 2>&1 | tee -a "$out/zoo.log"
    python -m bench.ensemble --force --out submission 2>&1 | tee "$out/ensemble.log"
    tar czf "$out/reports.tgz" reports runs/*/*/run.json runs/*/*/history.csv ;;
  tune)
    { time python -m bench.tune --model resnet18 --trials 50 --no-progress $extra; } 2>&1 | tee "$out/tune.log"
    tar czf "$out/tune-reports.tgz" reports ;;
  *) echo "unknown stage $1" >&2; exit 2 ;;
esac
