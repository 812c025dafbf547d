"""Write the built-in demo dataset (procedurally drawn garments, FashionDataset layout; bench/data/demo.py).

    python -m bench.demo --out DIR [--seed 0] [--train 800 --val 200 --test 200 --width 96 --height 128]
                                   [--schema colour:2,category:5,season:11 [--missing 0.1]]  (CSV layout)
"""
from __future__ import annotations

import argparse

from bench.data.demo import HIDDEN_CSV, HIDDEN_TXT, DemoSpec, parse_schema, write_demo


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="new folder to write the dataset into")
    d = DemoSpec()
    for f in ("seed", "train", "val", "test", "width", "height"):
        p.add_argument(f"--{f}", type=int, default=getattr(d, f))
    p.add_argument("--schema", help="NAME:CLASSES,... : a CSV-layout dataset with these attributes instead of the "
                   "FashionDataset's six, e.g. colour:2,category:5,season:11")
    p.add_argument("--missing", type=float, default=0.0,
                   help="with --schema: fraction of train/val label cells left empty (missing labels)")
    a = p.parse_args(argv)
    try:
        schema = parse_schema(a.schema) if a.schema else ()
    except ValueError as e:
        p.error(f"--schema: {e}")
    if not 0 <= a.missing < 1 or (a.missing and not schema):
        p.error("--missing takes a fraction in [0, 1) and needs --schema")
    spec = DemoSpec(a.seed, a.train, a.val, a.test, a.width, a.height, schema, a.missing)
    out = write_demo(a.out, spec)
    kind = "CSV dataset (" + ", ".join(f"{n}: {k} classes" for n, k in schema) + ")" if schema else "FashionDataset"
    print(f"wrote demo {kind} to {out} ({spec.train}/{spec.val}/{spec.test} images, "
          f"{spec.width}x{spec.height}); test labels in {out / (HIDDEN_CSV if schema else HIDDEN_TXT)} (how to "
          f"score: {out / 'hidden/README.txt'})")
    return out


if __name__ == "__main__":
    main()
