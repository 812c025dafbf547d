"""Prediction and truth files: the one owner of their formats (every writer writes them here, bench.score reads them
here).

- prediction.txt (the challenge's format, the FashionDataset's submission): one line per image in the split's order,
  one space-separated class index per attribute. bench.ensemble writes beside it a provenance file,
  prediction.txt.provenance.json, naming the split and the images its lines are for and the file's sha256, so a
  prediction is never scored against another split's labels by line count alone (`provenance_text`,
  `read_provenance`).
- the prediction CSV (bench.ensemble's prediction.csv for a CSV dataset, bench.predict's CSV for any images): a
  header, then one row per image: `image` (its path), per attribute ATTRIBUTE (the class name) and ATTRIBUTE_prob
  (its probability), then with bench.predict --probs ATTRIBUTE=CLASS per class (columns: bench/data/columns.py).
  The reader needs `image` and every attribute, in any order; probability columns are optional.
- the truth CSV (bench.score --truth; a CSV demo's hidden/test_labels.csv): `image` and one column per attribute,
  class names; an empty cell is a missing label.

Images are matched by path (`pair_images`): equal after normalisation, or one path ending with the other (a
prediction CSV names `ROOT/img/1.jpg` where the split lists `img/1.jpg`). Every problem is reported at once as
file:line[:column].
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.data.columns import IMAGE, ColumnClash, prediction_columns
from bench.data.dataset import DEFAULT_CLASS_NAMES, DatasetError, parse_label_lines, read_csv_rows

DEFAULT_NUM_CLASSES = tuple(len(c) for c in DEFAULT_CLASS_NAMES)
PROVENANCE_SUFFIX = ".provenance.json"
PROVENANCE_FORMAT = 1


# ---- prediction.txt: one line of class indices per image ------------------------------------------------------

def read_predictions(path: str | Path, num_classes=DEFAULT_NUM_CLASSES,
                     expected_lines: int | None = None, attributes=None) -> np.ndarray:
    """A prediction file (or a label file of the same format) as (N, attributes) ints; DatasetError naming every bad
    line (or a file that is not UTF-8 text), each field by its attribute's name."""
    problems: list[str] = []
    rows = parse_label_lines(Path(path), tuple(num_classes), problems, expected_lines, attributes)
    if problems:
        raise DatasetError(problems, f"prediction file {path}")
    return rows


def format_predictions(pred: np.ndarray) -> str:
    return "".join(" ".join(str(int(v)) for v in row) + "\n" for row in pred)


def label_file_split(path: str | Path) -> str | None:
    """The split a FashionDataset label file names (ROOT/split/val_attr.txt: val; a demo's hidden/test_attr.txt:
    test); None for any other name."""
    m = re.fullmatch(r"(train|val|test)_attr\.txt", Path(path).name)
    return m.group(1) if m else None


# ---- the prediction CSV and the truth CSV ----------------------------------------------------------------------

def format_prediction_csv(paths, pred: np.ndarray, attributes, class_names, probs: np.ndarray | None = None,
                          all_probs: bool = False) -> str:
    """The prediction CSV (module docstring): per image its path and per attribute the class name and, given `probs`
    ((N, sum of classes), combined probabilities), that class's probability, and with `all_probs` every class's.
    ColumnClash (bench/data/columns.py) when two columns would share a name."""
    if all_probs and probs is None:
        raise ValueError("all_probs needs probs")
    header = prediction_columns(attributes, class_names, probs is not None, all_probs)
    edges = np.cumsum([0, *(len(c) for c in class_names)])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for i, path in enumerate(paths):
        row = [str(path)]
        for a, names in enumerate(class_names):
            c = int(pred[i, a])
            row.append(names[c])
            if probs is not None:
                row.append(f"{probs[i, edges[a] + c]:.6f}")
        if all_probs:
            row += [f"{v:.6f}" for v in probs[i]]
        w.writerow(row)
    return buf.getvalue()


@dataclass
class Table:
    """A CSV read with the line each row starts on."""
    file: str
    header: list[str]
    rows: list[tuple[int, list[str]]]

    def column(self, name: str) -> int:
        return self.header.index(name)


def read_table(path: str | Path, what: str) -> Table:
    """A CSV with a header (`what` names it in messages); DatasetError for an unreadable file, a quoted field never
    closed, no header, or a column named twice."""
    problems: list[str] = []
    read = read_csv_rows(Path(path), problems)
    if read is None or not read[1]:
        raise DatasetError(problems, f"{what} {path}")
    rows = read[0]
    if not rows or not any(h.strip() for h in rows[0][1]):
        raise DatasetError([f"{path}:1: no header row (image and one column per attribute)"], f"{what} {path}")
    header = [h.strip() for h in rows[0][1]]
    for j, h in enumerate(header):
        if header.index(h) != j:
            problems.append(f"{path}:1:{j + 1}: column {h!r} appears twice (first in column {header.index(h) + 1})")
    if IMAGE not in header:
        problems.append(f"{path}:1: no column {IMAGE!r} (the image paths)")
    if problems:
        raise DatasetError(problems, f"{what} {path}")
    return Table(str(path), header, [(i, r) for i, r in rows[1:] if any(c.strip() for c in r)])


@dataclass
class Labelled:
    """Class indices per image, as a file gives them: `values` (N, attributes) (-1: a missing label), the image of
    each row (None: a file of int lines without provenance) and where each row is (file:line)."""
    values: np.ndarray
    images: list[str] | None
    where: list[str]
    file: str


def _attribute_columns(table: Table, attributes, class_names, optional, problems) -> list[int]:
    """The column of each attribute; a problem for a missing attribute or a column that is neither the image, an
    attribute nor one of `optional` (the probability columns a prediction CSV may carry)."""
    known = {IMAGE, *attributes, *optional}
    for j, h in enumerate(table.header):
        if h not in known:
            problems.append(f"{table.file}:1:{j + 1}: column {h!r} is not an attribute of the dataset (its attributes: "
                            f"{', '.join(attributes)})")
    cols = []
    for a in attributes:
        if a not in table.header:
            problems.append(f"{table.file}:1: no column for attribute {a!r} (the dataset's attributes: "
                            f"{', '.join(attributes)})")
        cols.append(table.header.index(a) if a in table.header else None)
    return cols


def _labelled(table: Table, attributes, class_names, optional, empty_ok: bool, what: str) -> Labelled:
    problems: list[str] = []
    cols = _attribute_columns(table, attributes, class_names, optional, problems)
    if problems:
        raise DatasetError(problems, f"{what} {table.file}")
    img = table.column(IMAGE)
    index = [{c: k for k, c in enumerate(names)} for names in class_names]
    values = np.full((len(table.rows), len(attributes)), -1, np.int64)
    images, where = [], []
    for r, (line, row) in enumerate(table.rows):
        where.append(f"{table.file}:{line}")
        if len(row) != len(table.header):
            problems.append(f"{table.file}:{line}: expected {len(table.header)} fields (as the header), found "
                            f"{len(row)}")
            images.append("")
            continue
        images.append(row[img].strip())
        if not images[-1]:
            problems.append(f"{table.file}:{line}:{img + 1}: empty image path")
        for a, j in enumerate(cols):
            cell = row[j].strip()
            if not cell:
                if not empty_ok:
                    problems.append(f"{table.file}:{line}:{j + 1}: no class for attribute {attributes[a]!r}")
                continue
            if cell not in index[a]:
                shown = ", ".join(class_names[a][:12]) + (", ..." if len(class_names[a]) > 12 else "")
                problems.append(f"{table.file}:{line}:{j + 1}: {cell!r} is not a class of {attributes[a]!r} "
                                f"({shown})")
                continue
            values[r, a] = index[a][cell]
    if problems:
        raise DatasetError(problems, f"{what} {table.file}")
    return Labelled(values, images, where, table.file)


def _probability_columns(attributes, class_names) -> list[str]:
    try:
        everything = prediction_columns(attributes, class_names, True, True)
    except ColumnClash:  # a schema the dataset reader refuses; read what can be read
        everything = [f"{a}_prob" for a in attributes]
    return [c for c in everything if c != IMAGE and c not in attributes]


def read_prediction_csv(path: str | Path, attributes, class_names) -> Labelled:
    """A prediction CSV (module docstring) as class indices; DatasetError naming each bad cell (file:line:column):
    an unknown class name, an empty cell, a column that is not the dataset's, an attribute without a column."""
    table = read_table(path, "prediction file")
    return _labelled(table, attributes, class_names, _probability_columns(attributes, class_names), False,
                     "prediction file")


def read_truth_csv(path: str | Path, attributes, class_names) -> Labelled:
    """A truth CSV (image, one column per attribute with class names, empty = missing) as class indices (-1:
    missing); DatasetError naming each bad cell (file:line:column) and each image listed twice."""
    truth = _labelled(read_table(path, "label file"), attributes, class_names, (), True, "label file")
    problems, first = [], {}
    for image, where in zip(truth.images, truth.where):
        k = _key(image)
        if k in first:
            problems.append(f"{where}: image {image!r} is listed twice (first at {first[k]})")
        first.setdefault(k, where)
    if problems:
        raise DatasetError(problems, f"label file {path}")
    return truth


def csv_schema(*paths) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """A schema read from CSV files alone (bench.score without a dataset): the first file's attributes (its columns
    other than image and probability columns) and each attribute's class names seen in any of the files, sorted.
    Class names cannot be checked against a dataset this way."""
    tables = [read_table(p, "file") for p in paths]
    attributes = tuple(h for h in tables[0].header if h != IMAGE and not h.endswith("_prob") and "=" not in h)
    names = []
    for a in attributes:
        seen = set()
        for t in tables:
            if a in t.header:
                j = t.column(a)
                seen |= {row[j].strip() for _, row in t.rows if len(row) > j and row[j].strip()}
        names.append(tuple(sorted(seen)) or ("?",))
    return attributes, tuple(names)


# ---- matching images -------------------------------------------------------------------------------------------

def _key(path: str) -> tuple[str, ...]:
    return tuple(p for p in re.split(r"[\\/]", os.path.normpath(path.strip())) if p not in ("", "."))


def pair_images(got: Labelled, want: list[str], what: str, want_where: list[str] | None = None) -> np.ndarray:
    """For each image of `want` (`what` names them, e.g. "the val split"), the row of `got` that predicts it:
    equal paths after normalisation, else the longest path ending with the other. DatasetError naming each row of
    `got` that is no image of `want` (file:line), each image predicted twice and each image of `want` without a
    row."""
    exact: dict[tuple[str, ...], int] = {}
    by_suffix: dict[tuple[str, ...], list[int]] = {}
    for i, w in enumerate(want):
        k = _key(w)
        exact.setdefault(k, i)
        for n in range(1, len(k)):
            by_suffix.setdefault(k[-n:], []).append(i)
    problems, row_of, unmatched = [], [None] * len(want), 0
    for r, (image, where) in enumerate(zip(got.images, got.where)):
        k = _key(image)
        hit = next((exact[k[-n:]] for n in range(len(k), 0, -1) if k[-n:] in exact), None)
        if hit is None:
            cands = by_suffix.get(k, [])
            if len(cands) > 1:
                problems.append(f"{where}: image {image!r} could be any of {', '.join(want[c] for c in cands[:3])}"
                                f"{', ...' if len(cands) > 3 else ''} of {what}; give its path as {what} lists it")
                continue
            hit = cands[0] if cands else None
        if hit is None:
            unmatched += 1
            problems.append(f"{where}: image {image!r} is not an image of {what}")
        elif row_of[hit] is not None:
            problems.append(f"{where}: image {image!r} is predicted twice (first at {got.where[row_of[hit]]})")
        else:
            row_of[hit] = r
    if got.images and unmatched == len(got.images):
        problems.insert(0, f"{got.file}: none of its {len(got.images)} images is an image of "
                           f"{what} ({len(want)} images): a prediction for another split or dataset?")
    missing = [i for i, r in enumerate(row_of) if r is None]
    if want_where is not None:
        problems += [f"{want_where[i]}: image {want[i]!r} has no prediction" for i in missing]
    elif missing:
        shown = ", ".join(repr(want[i]) for i in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                                                   else "")
        problems.append(f"{what}: {len(missing)} of its {len(want)} images have no prediction: {shown}")
    if problems:
        raise DatasetError(problems, "the prediction's images")
    return np.array(row_of, np.int64)


def align_truth(truth: Labelled, images: list[str], what: str) -> np.ndarray:
    """A truth file's labels in the order of `images` (`what` names them); DatasetError when its images are not
    exactly those."""
    return truth.values[pair_images(truth, images, what)]


# ---- provenance of prediction.txt ------------------------------------------------------------------------------

def provenance_path(prediction: str | Path) -> Path:
    """The provenance file beside a prediction file: prediction.txt -> prediction.txt.provenance.json."""
    prediction = Path(prediction)
    return prediction.with_name(prediction.name + PROVENANCE_SUFFIX)


def provenance_text(prediction_text: str, file_name: str, split: str, images: list[str] | None, dataset: str | None,
                    data_root: str | None, written_by: str) -> str:
    """The provenance of a prediction file whose content is `prediction_text`: its split, the image of each line in
    order (None when the dataset could not be read to list them), the dataset fingerprint and root."""
    return json.dumps({"format": PROVENANCE_FORMAT, "file": file_name,
                       "sha256": hashlib.sha256(prediction_text.encode()).hexdigest(), "split": split,
                       "images": list(images) if images is not None else None, "dataset": dataset,
                       "data_root": data_root, "written_by": written_by}, indent=1) + "\n"


def read_provenance(prediction: str | Path) -> tuple[dict | None, str]:
    """(the provenance of a prediction file, "") when its provenance file describes exactly this file, else (None,
    why its provenance is unknown)."""
    prediction, side = Path(prediction), provenance_path(prediction)
    if not side.is_file():
        return None, f"{prediction} has no provenance file ({side.name}, written by bench.ensemble)"
    try:
        prov = json.loads(side.read_text(encoding="utf-8"))
        digest = hashlib.sha256(prediction.read_bytes()).hexdigest()
        ok = prov["sha256"] == digest
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"{side} cannot be read ({type(e).__name__}: {e})"
    if not ok:
        return None, f"{side} describes another version of {prediction.name} (the file changed since it was written)"
    return prov, ""
