#!/usr/bin/env bash
# Issue #26 measurement (reports/reference/predict.md): images/s of bench.predict on the 1000 test images of a
# FashionDataset for one member and an ensemble entry, PyTorch and onnxruntime, plus bench.export's ONNX vs eager
# PyTorch latency per image. Reads finished runs; trains nothing.
#
#   scripts/predict_speed.sh WORKDIR MODEL ENSEMBLE [DATA] [DEVICE]
#   e.g. scripts/predict_speed.sh /tmp/fd default/resnet18 ensemble ../shared/fashion-dev cpu
#
# WORKDIR holds runs/ with MODEL (RUN/MODEL) and runs/_ensembles/ENSEMBLE, trained on DATA (default
# ../shared/fashion-dev). Each bench.predict prints "N image(s) in S s (R img/s, decoding included)"; the first
# call per input size decodes JPEGs cold (no decode cache is used for prediction), so every line is a cold run of
# the whole command's predict loop. The load average before and after each step is printed: on a shared 2-core
# CPU the numbers mean little unless it is low.
set -euo pipefail
WD=${1:?WORKDIR}; MODEL=${2:?RUN/MODEL}; ENS=${3:?ENSEMBLE}; DATA=${4:-../shared/fashion-dev}; DEV=${5:-cpu}
PY=${PYTHON:-python}
OUT="$WD/predict-speed"; mkdir -p "$OUT"
sed "s#^#$(cd "$DATA" && pwd)/#" "$DATA/split/test.txt" > "$OUT/test-list.txt"
echo "# $(date -u +%FT%TZ) $(uname -n), $(nproc) cores, torch $($PY -c 'import torch; print(torch.__version__)'), device $DEV"
step() { echo; echo "## $*"; echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"; "$@" 2>&1 | grep -v '^\[torch.onnx\]' | tail -3; echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"; }
M=${MODEL//\//-}
step $PY -m bench.predict "$OUT/test-list.txt" --workdir "$WD" --model "$MODEL" --device "$DEV" --engine torch --no-progress --out "$OUT/model.csv"
step $PY -m bench.predict "$OUT/test-list.txt" --workdir "$WD" --ensemble "$ENS" --device "$DEV" --engine torch --no-progress --out "$OUT/ensemble.csv"
step $PY -m bench.export --workdir "$WD" --model "$MODEL" --format onnx --out "$OUT/$M.onnx" --latency-batch 32
step $PY -m bench.export --workdir "$WD" --ensemble "$ENS" --format onnx --out "$OUT/$ENS.onnx" --latency-batch 32
step $PY -m bench.predict "$OUT/test-list.txt" --workdir "$WD" --model "$MODEL" --onnx "$OUT/$M.onnx" --no-progress --out "$OUT/model-onnx.csv"
step $PY -m bench.predict "$OUT/test-list.txt" --workdir "$WD" --ensemble "$ENS" --onnx "$OUT/$ENS.onnx" --no-progress --out "$OUT/ensemble-onnx.csv"
