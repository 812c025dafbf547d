"""Training-throughput benchmark: seed-style DataLoader loop vs this trainer vs the model-only ceiling.

    python -m bench.speed --models resnet50,effb3 [--data ROOT] [--steps 50] [--compile off,on]

Prints images/s and the ratios, and writes a Markdown table to WORKDIR/reports/speed-<device>.md. The measurements
are in bench/training/throughput.py; this module only parses arguments (torch loads after --help).
"""
from __future__ import annotations

import argparse
import os
import sys

from bench import workdir


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet50,effb3")
    p.add_argument("--data", help="dataset root (default $FASHION_DATA, else the demo set)")
    p.add_argument("--size", type=int, help="input size (default: the zoo's on CUDA, 64 on the CPU)")
    p.add_argument("--batch-size", type=int, help="trainer batch size (default: the recipe's)")
    p.add_argument("--steps", type=int, help="timed steps per measurement (default 50 on CUDA, 4 on the CPU)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="seed-style DataLoader workers")
    p.add_argument("--compile", default="off", help="compile settings to measure, comma-separated: off, on")
    p.add_argument("--out", help="folder for the Markdown table (default WORKDIR/reports)")
    workdir.add_argument(p)
    a = p.parse_args(argv)
    a.out = a.out or str(workdir.resolve(a.workdir).reports)
    a.argv = sys.argv[1:] if argv is None else argv
    from bench.training.throughput import measure
    return measure(a)


if __name__ == "__main__":
    main()
