"""Prediction files: one line per image in the split's order, one space-separated int per attribute (the challenge's
format: 6 ints)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.data.dataset import DEFAULT_CLASS_NAMES, DatasetError, parse_label_lines

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


def format_predictions(pred: np.ndarray) -> str:
    return "".join(" ".join(str(int(v)) for v in row) + "\n" for row in pred)
