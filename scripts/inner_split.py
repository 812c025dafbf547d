"""An inner train/validation split of a FashionDataset's TRAIN images, for choosing recipe values without looking at val.

Writes OUT/split/{train,val,test}.txt and {train,val}_attr.txt (the inner val is one fold of a stratified k-fold of
train, bench.data.folds), copies list_attr_cloth.txt and test.txt, and links OUT/img to ROOT/img. A study tuned on OUT
never sees ROOT's val images, so a recipe it picks can then be scored on ROOT's val out of sample.
    python scripts/inner_split.py ../shared/fashion-dev /tmp/fashion-inner --folds 5 --seed 0
"""
import argparse, shutil, sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.data import open_dataset  # noqa: E402
from bench.data.folds import stratified_folds  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("root"); p.add_argument("out")
p.add_argument("--folds", type=int, default=5, help="inner val = 1/FOLDS of train (default 5: 20%%)")
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
root, out = Path(a.root).resolve(), Path(a.out)
ds = open_dataset(root, check_images=False)
names, labels = ds.splits["train"].paths, ds.splits["train"].labels
fold = stratified_folds(labels, a.folds, a.seed)
(out / "split").mkdir(parents=True, exist_ok=True)
for split, rows in (("train", np.flatnonzero(fold != 0)), ("val", np.flatnonzero(fold == 0))):
    (out / "split" / f"{split}.txt").write_text("".join(f"{names[i]}\n" for i in rows))
    (out / "split" / f"{split}_attr.txt").write_text("".join(" ".join(map(str, labels[i])) + "\n" for i in rows))
for f in ("test.txt", "list_attr_cloth.txt"):
    shutil.copy(root / "split" / f, out / "split" / f)
if not (out / "img").exists():
    (out / "img").symlink_to(root / "img", target_is_directory=True)
print(f"{out}: train {int((fold != 0).sum())}, val {int((fold == 0).sum())} (fold 0 of {a.folds}, seed {a.seed}) "
      f"from {root}'s {len(names)} train images; test as in {root}")
