"""The CSV dataset layout: any attributes, any classes, missing labels.

    ROOT/labels.csv (or any file given as --labels)    a header, then one row per image:
        image        the image's path relative to ROOT
        split        train, val or test (optional: without it, a stratified val split is carved from the rows at
                     `val_fraction` with `split_seed`, both recorded, and there is no test split)
        every other column is an attribute; its cells are class names; an empty cell is a missing label

Attribute names are the header's, in its order; each attribute's classes are the names seen in train and val, in
sorted order (recorded in run.json). Test rows' label cells are ignored. An attribute name that would give two
columns of a table the suite writes the same name (bench/data/columns.py) is refused here, before any training.
Every problem is reported at once as file:line:column (lines as an editor counts them, a quoted field's line breaks
included); nothing in ROOT is written.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bench.data.columns import IMAGE, SPLIT, attribute_name_problems
from bench.data.dataset import (EMPTY_SPLIT_NEED, SPLITS, DatasetError, FashionDataset, Split, check_image_files,
                                read_csv_rows)

LABELS_FILE = "labels.csv"
DEFAULT_VAL_FRACTION = 0.2
RESERVED = {IMAGE, SPLIT}


def is_csv_root(root: Path) -> bool:
    """A CSV dataset: ROOT/labels.csv and no FashionDataset ROOT/split folder."""
    return (root / LABELS_FILE).is_file() and not (root / "split").is_dir()


def open_csv_dataset(root: str | Path, labels: str | Path | None = None, val_fraction: float | None = None,
                     split_seed: int = 0, check: bool = True) -> FashionDataset:
    """Validate a CSV dataset; raise DatasetError listing every problem found (file:line:column)."""
    root = Path(root)
    path = Path(labels) if labels else root / LABELS_FILE
    problems: list[str] = []
    if not root.is_dir():
        raise DatasetError([f"{root}: dataset folder does not exist"])
    if not path.is_file():
        raise DatasetError([f"{path}: label file not found (a CSV with columns image, split and one per attribute)"])
    read = read_csv_rows(path, problems)
    if read is None:
        raise DatasetError(problems, f"dataset {root}")
    rows, complete = read
    if not rows or not any(h.strip() for h in rows[0][1]):
        raise DatasetError([*problems, f"{path}:1: no header row (image, split and one column per attribute)"])
    header, unclosed = [h.strip() for h in rows[0][1]], list(problems)  # unclosed: a quote never closed, if any
    for j, h in enumerate(header):
        if not h:
            problems.append(f"{path}:1:{j + 1}: empty column name")
        elif header.index(h) != j:
            problems.append(f"{path}:1:{j + 1}: column {h!r} appears twice (first in column {header.index(h) + 1})")
    if "image" not in header:
        problems.append(f"{path}:1: no column 'image' (the image paths relative to {root})")
    attr_cols = [j for j, h in enumerate(header) if h and h not in RESERVED and header.index(h) == j]
    if not attr_cols:
        problems.append(f"{path}:1: no attribute columns (every column other than image and split is one)")
    if problems != unclosed:
        raise DatasetError(problems, f"dataset {root}")
    img_col, split_col = header.index("image"), header.index("split") if "split" in header else None
    if split_col is None and val_fraction is None:
        val_fraction = DEFAULT_VAL_FRACTION
    if split_col is not None and val_fraction is not None:
        problems.append(f"{path}:1:{split_col + 1}: the file has a split column, so --val-fraction does not apply")
    records = []  # (line, split, path, {attribute column: cell})
    seen: dict[str, tuple[str, int]] = {}
    for i, row in rows[1:]:
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            problems.append(f"{path}:{i}: expected {len(header)} fields (as the header), found {len(row)}")
            continue
        p = row[img_col].strip()
        split = row[split_col].strip() if split_col is not None else "train"
        where = f"{path}:{i}:{img_col + 1}"
        norm = os.path.normpath(p) if p else ""
        if not p:
            problems.append(f"{where}: empty image path")
        elif os.path.isabs(p) or norm.split(os.sep)[0] == "..":
            problems.append(f"{where}: image path {p!r} must be relative to {root} and inside it")
        elif not (root / p).is_file():
            problems.append(f"{where}: image {p!r} is listed but missing")
        if split not in SPLITS:
            problems.append(f"{path}:{i}:{split_col + 1}: unknown split {split!r}; one of {', '.join(SPLITS)}")
            continue
        if norm:
            first = seen.setdefault(norm, (split, i))
            if first[1] != i:
                what = f"also in split {first[0]!r}" if first[0] != split else f"listed twice in split {split!r}"
                problems.append(f"{where}: image {p!r} is {what} (first at line {first[1]}); list each image once")
        records.append((i, split, p, {j: row[j].strip() for j in attr_cols}))
    if not complete:  # the rows after an unclosed quote were never read: whole-file checks would mislead
        raise DatasetError(problems, f"dataset {root}")
    if split_col is None and records:
        records = _carve_val(records, attr_cols, val_fraction, split_seed, problems, path)
    attributes = tuple(header[j] for j in attr_cols)
    class_names = []
    for j, name in zip(attr_cols, attributes):
        train = {r[3][j] for r in records if r[1] == "train" and r[3][j]}
        classes = sorted(train)
        for i, split, _, cells in records:
            if split == "val" and cells[j] and cells[j] not in train:
                problems.append(f"{path}:{i}:{j + 1}: class {cells[j]!r} of attribute {name!r} is in val but never "
                                f"in train (a model cannot learn it)")
        if len(classes) < 2:
            what = f"one class only ({classes[0]!r})" if classes else "no label in train"
            problems.append(f"{path}:1:{j + 1}: attribute {name!r} has {what}; a head needs two classes or more "
                            f"(drop the column)")
        class_names.append(tuple(classes))
    problems += [f"{path}:1:{attr_cols[i] + 1}: {why}" for i, why in attribute_name_problems(attributes, class_names)]
    splits = {}
    for name in SPLITS:
        mine = [r for r in records if r[1] == name]
        if not mine and name in EMPTY_SPLIT_NEED:
            problems.append(f"{path}: the {name} split is empty; {EMPTY_SPLIT_NEED[name]}")
        labels_arr = None
        if name != "test":
            index = [{c: k for k, c in enumerate(cls)} for cls in class_names]
            labels_arr = np.array([[index[a].get(r[3][j], -1) for a, j in enumerate(attr_cols)] for r in mine],
                                  np.int64).reshape(len(mine), len(attr_cols))
        splits[name] = Split(name, tuple(r[2] for r in mine), labels_arr)
    if check:
        problems.extend(check_image_files(root, [r[2] for r in records]))
    if problems:
        raise DatasetError(problems, f"dataset {root}")
    layout = {"layout": "csv", "labels": str(path.resolve()) if labels else None}  # None: ROOT/labels.csv
    if split_col is None:
        layout.update(val_fraction=val_fraction, split_seed=split_seed)
    return FashionDataset(root, tuple(class_names), splits, attributes, layout)


def _carve_val(records, attr_cols, fraction: float, seed: int, problems: list[str], path: Path):
    """Rows without a split column: a stratified val split of about `fraction` of them (the first of round(1 /
    fraction) stratified folds, seeded), the rest train."""
    from bench.data.folds import stratified_folds
    if not 0 < fraction < 1:
        problems.append(f"{path}: --val-fraction {fraction} must be between 0 and 1")
        return records
    k = max(2, round(1 / fraction))
    names = [sorted({r[3][j] for r in records if r[3][j]}) for j in attr_cols]
    labels = np.array([[names[a].index(r[3][j]) if r[3][j] else -1 for a, j in enumerate(attr_cols)]
                       for r in records], np.int64)
    fold = stratified_folds(labels, k, seed) if len(records) >= k else np.ones(len(records), int)
    return [(i, "val" if f == 0 else "train", p, cells) for (i, _, p, cells), f in zip(records, fold)]
