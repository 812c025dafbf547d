"""Validate and score a prediction file against true labels.

    python -m bench.score prediction.txt --data ROOT --split val              (the FashionDataset's format)
    python -m bench.score prediction.txt --truth ROOT/split/val_attr.txt
    python -m bench.score prediction.csv --data ROOT --split val              (bench.ensemble's or bench.predict's CSV)
    python -m bench.score prediction.csv --truth truth.csv [--data ROOT]      (image + class name per attribute)
    python -m bench.score --baseline majority --data ROOT --split val

The prediction and truth formats are bench/data/predictions.py's. A CSV is matched to the truth by image path; a
prediction.txt line by line, its images checked with the provenance file bench.ensemble writes beside it (a
prediction for another split is refused; a file without provenance is scored by line order, and the output says
so). --data gives the schema (attributes and class names); without --data or $FASHION_DATA, a CSV's schema is read
from the two files (class names then cannot be checked) and a prediction.txt's is the FashionDataset's.
"""
from __future__ import annotations

import argparse
import os
import sys

from bench.data import (ATTRIBUTES, DEFAULT_CLASS_NAMES, SPLITS, DatasetError, Labelled, add_layout_arguments,
                        csv_schema, label_file_split, layout_args, open_dataset, pair_images, read_prediction_csv,
                        read_predictions, read_provenance, read_truth_csv, resolve_root)
from bench.data.demo import hidden_test_labels
from bench.metrics import format_score, majority_prediction, score


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.score", description=__doc__.split("\n\n")[0],
                                epilog="Formats: bench/data/predictions.py (docs/reports.md: Prediction files).")
    p.add_argument("prediction", nargs="?", metavar="PREDICTION",
                   help="prediction.txt (one line per image, one class index per attribute: the challenge's format) "
                        "or a prediction CSV (.csv: image and class name per attribute, as bench.ensemble and "
                        "bench.predict write it)")
    p.add_argument("--truth", metavar="FILE",
                   help="the true labels: a CSV (.csv: image and one column per attribute, class names; an empty "
                        "cell is a missing label) or a file of class-index lines like prediction.txt (e.g. "
                        "ROOT/split/val_attr.txt). Default: the labels of --split of --data")
    p.add_argument("--data", metavar="ROOT",
                   help="dataset root: the schema (attributes, class names) and the labels of --split (default "
                        "$FASHION_DATA, else the built-in demo)")
    p.add_argument("--split", choices=SPLITS,
                   help="the split scored against (default val); test where its labels exist (a demo's hidden/); "
                        "with --truth FILE of class-index lines: the split whose images its lines are")
    add_layout_arguments(p)
    p.add_argument("--baseline", choices=["majority"], help="score a baseline instead of a file")
    a = p.parse_args(argv)
    if not a.prediction and not a.baseline:
        p.error("give a PREDICTION file or --baseline majority")
    if a.labels and not a.data:
        p.error("--labels FILE is a CSV dataset's label file (as in bench.run), read with --data ROOT; the true "
                "labels to score against are --truth FILE (bench.score's --labels before 2026-12)")
    return a


def _is_csv(path: str | None) -> bool:
    return bool(path) and path.lower().endswith(".csv")


def main(argv=None) -> dict:
    a = parse_args(argv)
    notes: list[str] = []
    try:
        labels, pred, nc, attributes, truth_what, challenge = gather(a, notes)
    except DatasetError as e:
        print(f"error: {e.summary()}", file=sys.stderr)
        raise SystemExit(2)
    result = score(labels, pred, nc, attributes)
    for n in notes:
        print(f"note: {n}")
    title = "majority-class baseline" if a.baseline else a.prediction
    print(format_score(result, f"{title} against {truth_what} ({len(labels)} images)", challenge))
    return result


def gather(a, notes: list[str]):
    """(true labels, predictions in the same order, classes per attribute, attribute names, what the truth is,
    whether the dataset is the FashionDataset layout: the challenges' metrics, metrics.metric_name); DatasetError for
    anything that does not fit."""
    want_ds = a.data or os.environ.get("FASHION_DATA") or a.split or a.baseline or not a.truth
    ds = open_dataset(resolve_root(a.data), check_images=False, **layout_args(a)) if want_ds else None
    challenge = ds.layout.get("layout") == "fashion" if ds is not None else not _is_csv(a.truth)
    if ds is not None:
        attributes, class_names = ds.attributes, ds.class_names
    elif _is_csv(a.truth) and _is_csv(a.prediction):
        attributes, class_names = csv_schema(a.truth, a.prediction)
        notes.append("no --data: the attributes are the truth file's and the class names those the two files use, "
                     "so a misspelt class name counts as wrong, not refused; give --data ROOT to check them")
    else:
        attributes, class_names = ATTRIBUTES, DEFAULT_CLASS_NAMES
    nc = tuple(len(c) for c in class_names)

    # the truth: its labels, its images when known (a CSV, or a split), and the split it is when known
    split = a.split or ("val" if not a.truth else None)
    if _is_csv(a.truth):
        truth = read_truth_csv(a.truth, attributes, class_names)
        truth_split, truth_what = None, a.truth
    elif a.truth:
        values = read_predictions(a.truth, nc, attributes=attributes)
        images = list(ds.splits[split].paths) if split and ds is not None else None
        if images is not None and len(images) != len(values):
            raise DatasetError([f"{a.truth}: has {len(values)} line(s), the {split} split of {ds.root} lists "
                                f"{len(images)} images (--split {split})"], f"label file {a.truth}")
        truth = Labelled(values, images, [f"{a.truth}:{i + 1}" for i in range(len(values))], a.truth)
        truth_split, truth_what = split or label_file_split(a.truth), a.truth
    else:
        s = ds.splits[split]
        values = s.labels
        if values is None:
            hidden = hidden_test_labels(ds.root, attributes, class_names, s.paths)
            if hidden is None:
                raise DatasetError([f"{ds.root}: the {split} split has no labels (a CSV dataset's test rows are "
                                    f"unlabelled; a demo keeps its test labels in hidden/); give --truth FILE"],
                                   f"dataset {ds.root}")
            values, source = hidden
            notes.append(f"the {split} split's labels are {source}")
        truth = Labelled(values, list(s.paths), [f"the {split} split's image {p!r}" for p in s.paths], str(ds.root))
        truth_split, truth_what = split, f"the {split} split of {ds.root}"
    if not len(truth.values):
        raise DatasetError([f"{truth_what}: no label lines; there is nothing to score"], f"label file {truth_what}")

    if a.baseline:
        return (truth.values, majority_prediction(ds.splits["train"].labels, nc, len(truth.values)), nc, attributes,
                truth_what, challenge)
    if _is_csv(a.prediction):
        got = read_prediction_csv(a.prediction, attributes, class_names)
        if truth.images is None:
            raise DatasetError([f"{a.truth}: its lines name no images, so a prediction CSV cannot be matched to them; "
                                f"give --data ROOT --split SPLIT (the split whose images its lines are), or a truth "
                                f"CSV"], f"label file {a.truth}")
        order = pair_images(got, truth.images, truth_what, truth.where if _is_csv(a.truth) else None)
        return truth.values, got.values[order], nc, attributes, truth_what, challenge

    values = read_predictions(a.prediction, nc, len(truth.values), attributes)
    prov, unknown = read_provenance(a.prediction)
    if prov is None:
        notes.append(f"provenance unknown: {unknown}; its lines were matched to {truth_what} by order (only their "
                     f"count is checked)")
        return truth.values, values, nc, attributes, truth_what, challenge
    images = prov.get("images")
    if images is not None and truth.images is not None:
        got = Labelled(values, list(images), [f"{a.prediction}:{i + 1}" for i in range(len(values))], a.prediction)
        try:
            order = pair_images(got, truth.images, truth_what)
        except DatasetError as e:
            raise DatasetError([f"{a.prediction}: its provenance file says it predicts the {prov.get('split')} split "
                                f"of {prov.get('data_root')}; it is scored against {truth_what}", *e.problems],
                               f"prediction file {a.prediction}") from None
        return truth.values, values[order], nc, attributes, truth_what, challenge
    if truth_split is not None and prov.get("split") != truth_split:
        raise DatasetError([f"{a.prediction}: its provenance file says it predicts the {prov.get('split')} split, "
                            f"but {truth_what} labels the {truth_split} split"], f"prediction file {a.prediction}")
    why = "its provenance lists no images" if images is None else f"{truth_what} names no images"
    notes.append(f"{a.prediction} predicts the {prov.get('split')} split (its provenance file); {why}, so its lines "
                 f"were matched by order")
    return truth.values, values, nc, attributes, truth_what, challenge


if __name__ == "__main__":
    main()
