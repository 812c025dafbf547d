"""Throughput benchmark, training and inference side by side: this trainer vs its own step on a fixed batch (the
ceiling) vs a seed-style DataLoader loop, for each candidate precision, layout, compile setting and thread count.

    python -m bench.speed [--models tf_efficientnet_lite0,resnet18] [--size 64,128] [--precision fp32,bf16]
                          [--layout channels_last,contiguous] [--compile off,on] [--threads 1,2] [--mode train,infer]

Prints images/s, the ratios and the CPU's features (avx512_bf16, AMX), and writes a Markdown table to
WORKDIR/reports/speed-<device>.md. The measurements are in bench/training/throughput.py; this module only parses
arguments (torch loads after --help).
"""
from __future__ import annotations

import argparse
import os
import sys

from bench import workdir


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", help="comma-separated (default: tf_efficientnet_lite0,resnet18 on the CPU, "
                   "resnet50,effb3 on CUDA)")
    p.add_argument("--data", help="dataset root (default $FASHION_DATA, else the demo set)")
    p.add_argument("--size", help="input sizes, comma-separated (default: 64,128 on the CPU (the demo's and "
                   "fashion-dev's), each model's zoo size on CUDA)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the recipe's)")
    p.add_argument("--steps", type=int, help="timed steps per measurement (default 50 on CUDA, 4 on the CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 on CUDA, 1 on the CPU)")
    p.add_argument("--precision", help="precisions to measure, comma-separated: fp32, bf16 (default: both where "
                   "bf16 runs natively (CUDA; a CPU with avx512_bf16 or AMX), else fp32)")
    p.add_argument("--layout", help="layouts to measure: channels_last, contiguous (default: both on the CPU, "
                   "channels_last on CUDA)")
    p.add_argument("--compile", default="off", help="compile settings to measure, comma-separated: off, on "
                   "(training: torch.compile of the step; inference: with inductor freezing)")
    p.add_argument("--threads", help="CPU intra-op thread counts to measure, comma-separated (default: the physical "
                   "cores)")
    p.add_argument("--mode", default="train,infer", help="train, infer or both (default both)")
    p.add_argument("--seed-style", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the seed-style DataLoader loop once per model and size (default on)")
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU inference: also export each network and time it in onnxruntime (when the onnx extra is "
                        "installed; default on)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="seed-style DataLoader workers")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", help="folder for the Markdown table (default WORKDIR/reports)")
    workdir.add_argument(p)
    a = p.parse_args(argv)
    a.out = a.out or str(workdir.resolve(a.workdir).reports)
    a.argv = sys.argv[1:] if argv is None else argv
    from bench.training.throughput import measure
    try:
        return measure(a)
    except ValueError as e:  # a precision, layout or device that does not exist
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
