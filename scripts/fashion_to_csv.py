"""Write a FashionDataset's labels in the CSV layout (reports/reference/datasets.md): one row per image of train,
val and test in split order, columns image, split and one per attribute with class names (test cells empty).

    python scripts/fashion_to_csv.py ROOT OUT.csv [--index-names]

--index-names writes each class as '<index>-<name>', so that the CSV layout's sorted class order equals the
FashionDataset's (for a like-for-like comparison: same head columns, same probabilities at the same seed).
Nothing in ROOT is written; open the result with `--data ROOT --labels OUT.csv`.
"""
import argparse
import csv
from pathlib import Path

from bench.data import open_dataset

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("root")
p.add_argument("out")
p.add_argument("--index-names", action="store_true")
a = p.parse_args()
ds = open_dataset(a.root, check_images=False)
names = [[f"{c}-{n}" if a.index_names else n for c, n in enumerate(cls)] for cls in ds.class_names]
with open(a.out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image", "split", *ds.attributes])
    for split in ("train", "val", "test"):
        s = ds.splits[split]
        for i, path in enumerate(s.paths):
            cells = [names[j][c] for j, c in enumerate(s.labels[i])] if s.labels is not None else [""] * len(names)
            w.writerow([path, split, *cells])
print(f"wrote {a.out}: {sum(len(s.paths) for s in ds.splits.values())} rows, attributes {', '.join(ds.attributes)}")
