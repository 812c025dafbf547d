"""Validate and score a prediction file.

    python -m bench.score prediction.txt --labels ROOT/split/val_attr.txt
    python -m bench.score prediction.txt --data ROOT --split val
    python -m bench.score --baseline majority --data ROOT --split val
    python -m bench.score prediction.csv --data ROOT --split val      (a CSV dataset: image path, class names)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bench.data import (DEFAULT_NUM_CLASSES, DatasetError, open_dataset, read_prediction_csv, read_predictions,
                        resolve_root)
from bench.metrics import format_score, majority_prediction, score

def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.score", description="Validate and score a prediction file.")
    p.add_argument("prediction", nargs="?", help="prediction.txt: one line per image, one space-separated int per "
                   "attribute (the FashionDataset: 6)")
    p.add_argument("--labels", help="label file with the true attributes (same format)")
    p.add_argument("--data", help="dataset root (default $FASHION_DATA, else the demo set)")
    p.add_argument("--split", default="val", choices=["train", "val"])
    p.add_argument("--baseline", choices=["majority"], help="score a baseline instead of a file")
    a = p.parse_args(argv)
    if not a.prediction and not a.baseline:
        p.error("give a PREDICTION file or --baseline majority")
    try:
        num_classes, train, attributes = DEFAULT_NUM_CLASSES, None, None
        if a.labels and not a.baseline:
            labels = read_predictions(a.labels)
        else:
            ds = open_dataset(resolve_root(a.data), check_images=False)
            num_classes, labels, train = ds.num_classes, ds.splits[a.split].labels, ds.splits["train"].labels
            attributes = ds.attributes
            if a.labels:
                labels = read_predictions(a.labels, num_classes, attributes=attributes)
        if not len(labels):  # metrics of zero images are undefined (sklearn raises)
            raise DatasetError([f"{a.labels}: no label lines; there is nothing to score"], f"label file {a.labels}")
        if a.baseline:
            pred, title = majority_prediction(train, num_classes, len(labels)), "majority-class baseline"
        elif a.prediction.endswith(".csv") and not a.labels:  # a CSV dataset's prediction.csv, by image path
            paths, pred = read_prediction_csv(a.prediction, ds.attributes, ds.class_names)
            want = ds.splits[a.split].paths
            if sorted(paths) != sorted(want) or len(set(paths)) != len(paths):
                raise DatasetError([f"{a.prediction}: its {len(paths)} image paths are not the {len(want)} of the "
                                    f"{a.split} split, each once"], f"prediction file {a.prediction}")
            order = {p: i for i, p in enumerate(paths)}
            pred, title = pred[[order[p] for p in want]], a.prediction
        else:
            pred, title = read_predictions(a.prediction, num_classes, len(labels), attributes), a.prediction
    except DatasetError as e:
        print(f"error: {e.summary()}", file=sys.stderr)
        raise SystemExit(2)
    result = score(labels, pred, num_classes, attributes)
    print(format_score(result, f"{title} ({len(labels)} images)"))
    return result


if __name__ == "__main__":
    main()
