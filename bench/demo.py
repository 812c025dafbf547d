"""Write the built-in demo dataset (procedurally drawn garments, FashionDataset layout; bench/data/demo.py).

    python -m bench.demo --out DIR [--seed 0] [--train 800 --val 200 --test 200 --width 96 --height 128]
"""
from __future__ import annotations

import argparse

from bench.data.demo import DemoSpec, write_demo


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="new folder to write the dataset into")
    d = DemoSpec()
    for f in ("seed", "train", "val", "test", "width", "height"):
        p.add_argument(f"--{f}", type=int, default=getattr(d, f))
    a = p.parse_args(argv)
    spec = DemoSpec(a.seed, a.train, a.val, a.test, a.width, a.height)
    out = write_demo(a.out, spec)
    print(f"wrote demo FashionDataset to {out} ({spec.train}/{spec.val}/{spec.test} images, "
          f"{spec.width}x{spec.height}); test labels in {out / 'hidden/test_attr.txt'}")
    return out


if __name__ == "__main__":
    main()
