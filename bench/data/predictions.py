"""Prediction files: for the FashionDataset, one line per image in the split's order, one space-separated int per
attribute (the challenge's format: 6 ints); for a CSV dataset, a CSV of image paths and class names."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from bench.data.dataset import DEFAULT_CLASS_NAMES, DatasetError, parse_label_lines, read_lines

DEFAULT_NUM_CLASSES = tuple(len(c) for c in DEFAULT_CLASS_NAMES)


def read_predictions(path: str | Path, num_classes=DEFAULT_NUM_CLASSES,
                     expected_lines: int | None = None, attributes=None) -> np.ndarray:
    """A prediction file as (N, attributes) ints; DatasetError naming every bad line (or a file that is not UTF-8
    text), each field by its attribute's name."""
    problems: list[str] = []
    rows = parse_label_lines(Path(path), tuple(num_classes), problems, expected_lines, attributes)
    if problems:
        raise DatasetError(problems, f"prediction file {path}")
    return rows


def format_prediction_csv(paths, pred: np.ndarray, attributes, class_names) -> str:
    """A CSV dataset's prediction file: a header (image and the attributes), then each image's path and its
    predicted class name per attribute."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", *attributes])
    w.writerows([p, *(class_names[a][int(c)] for a, c in enumerate(row))] for p, row in zip(paths, pred))
    return buf.getvalue()


def read_prediction_csv(path: str | Path, attributes, class_names) -> tuple[list[str], np.ndarray]:
    """A prediction CSV as (paths, (N, attributes) class indices); DatasetError naming every bad cell by
    file:line:column."""
    problems: list[str] = []
    lines = read_lines(Path(path), problems)
    rows = list(csv.reader(lines or []))
    if lines is not None and (not rows or rows[0] != ["image", *attributes]):
        problems.append(f"{path}:1: header should be {','.join(['image', *attributes])}")
    paths, pred = [], np.zeros((max(len(rows) - 1, 0), len(attributes)), np.int64)
    index = [{c: k for k, c in enumerate(cls)} for cls in class_names]
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(attributes) + 1:
            problems.append(f"{path}:{i}: expected {len(attributes) + 1} fields, found {len(row)}")
            continue
        paths.append(row[0])
        for a, cell in enumerate(row[1:]):
            if cell not in index[a]:
                problems.append(f"{path}:{i}:{a + 2}: {cell!r} is not a class of {attributes[a]!r}")
            pred[i - 2, a] = index[a].get(cell, 0)
    if problems:
        raise DatasetError(problems, f"prediction file {path}")
    return paths, pred


def format_predictions(pred: np.ndarray) -> str:
    return "".join(" ".join(str(int(v)) for v in row) + "\n" for row in pred)
