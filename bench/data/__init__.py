"""Stage 1, files -> validated dataset: the FashionDataset reader (dataset.py), the CSV layout (csv_layout.py;
`open_dataset` below detects which), the attribute names a dataset may have and the columns written for them
(columns.py), the decode cache (images.py) with its resize policies (resize.py), the demo dataset (demo.py),
prediction and truth files (predictions.py) and stratified folds (folds.py). Nothing here imports torch."""
from __future__ import annotations

import os
from pathlib import Path

from bench.data.dataset import (ATTRIBUTES, DEFAULT_CLASS_NAMES, LABELLED_SPLITS, SPLITS, DatasetError, FashionDataset,
                                Split, attribute_names, attributes_of, cache_home, class_counts,
                                open_fashion_dataset, parse_label_lines, reopen_args)
from bench.data.columns import (ColumnClash, attribute_name_problems, leaderboard_attribute_columns,
                                prediction_columns)
from bench.data.csv_layout import is_csv_root, open_csv_dataset
from bench.data.predictions import (DEFAULT_NUM_CLASSES, Labelled, csv_schema, format_prediction_csv,
                                    format_predictions, label_file_split, pair_images, provenance_path,
                                    provenance_text, read_prediction_csv, read_predictions, read_provenance,
                                    read_truth_csv)

__all__ = ["ATTRIBUTES", "DEFAULT_CLASS_NAMES", "DEFAULT_NUM_CLASSES", "LABELLED_SPLITS", "SPLITS", "ColumnClash",
           "DatasetError", "FashionDataset", "Labelled", "Split", "add_layout_arguments", "attribute_name_problems",
           "attribute_names", "attributes_of", "cache_home", "class_counts", "csv_schema", "format_prediction_csv",
           "format_predictions", "label_file_split", "layout_args", "leaderboard_attribute_columns", "open_dataset",
           "pair_images", "parse_label_lines", "prediction_columns", "provenance_path", "provenance_text",
           "read_prediction_csv", "read_predictions", "read_provenance", "read_truth_csv", "reopen_args",
           "resolve_root"]


def open_dataset(root: str | Path, check_images: bool = True, labels: str | Path | None = None,
                 val_fraction: float | None = None, split_seed: int = 0, layout: str | None = None) -> FashionDataset:
    """Validate a dataset root; raise DatasetError listing every problem found. The layout is detected: the CSV
    layout (bench/data/csv_layout.py) when `labels` or `val_fraction` is given or ROOT/labels.csv exists without
    ROOT/split/, else the FashionDataset's."""
    root = Path(root)
    if layout == "csv" or labels or val_fraction is not None or (layout is None and is_csv_root(root)):
        return open_csv_dataset(root, labels, val_fraction, split_seed, check_images)
    return open_fashion_dataset(root, check_images)


def add_layout_arguments(p) -> None:
    """--labels, --val-fraction and --split-seed: how a command that takes --data opens a CSV-layout dataset."""
    p.add_argument("--labels", metavar="FILE", help="CSV layout: the dataset's label file (columns image, split and "
                   "one per attribute; default ROOT/labels.csv)")
    p.add_argument("--val-fraction", type=float,
                   help="CSV layout without a split column: the fraction of rows carved into a stratified val split "
                        "(default 0.2)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the --val-fraction split (recorded)")


def layout_args(a) -> dict:
    """open_dataset's keyword arguments from the parsed add_layout_arguments flags."""
    return {"labels": a.labels, "val_fraction": a.val_fraction, "split_seed": a.split_seed}


def resolve_root(data: str | None) -> Path:
    """--data PATH, else $FASHION_DATA, else the built-in demo set (generated once)."""
    if data:
        return Path(data)
    if os.environ.get("FASHION_DATA"):
        return Path(os.environ["FASHION_DATA"])
    from bench.data.demo import ensure_demo
    return ensure_demo()
