"""Decode-cache benchmark: first (decode) vs second (cached) load of every image (bench/data/images.py).

    python -m bench.images --data ROOT --size 224 [--policy letterbox]
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bench.data import SPLITS, open_dataset, resolve_root
from bench.data.images import timed_load
from bench.data.resize import RESIZE


def main(argv=None):
    """Benchmark: first (decode) vs second (cached) load of every image of a dataset, in a fresh cache folder."""
    p = argparse.ArgumentParser(prog="python -m bench.images", description=main.__doc__)
    p.add_argument("--data", help="dataset root (default $FASHION_DATA, else the demo set)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--policy", default="letterbox", choices=RESIZE.names(), help=RESIZE.describe())
    a = p.parse_args(argv)
    ds = open_dataset(resolve_root(a.data), check_images=False)
    files = [f for s in SPLITS for f in ds.files(s)]
    with tempfile.TemporaryDirectory() as tmp:
        images, first = timed_load(files, a.size, a.policy, Path(tmp))
        second = min(timed_load(files, a.size, a.policy, Path(tmp))[1] for _ in range(3))
    print(f"{len(files)} images -> {images.shape} uint8 ({images.nbytes / 2**20:.0f} MiB), {os.cpu_count()} CPU(s)")
    print(f"first load (decode + write cache): {first:.2f} s")
    print(f"second load (cache hit, best of 3): {second:.2f} s   speed-up {first / second:.1f}x")


if __name__ == "__main__":
    main()
