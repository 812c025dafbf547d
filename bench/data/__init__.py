"""Stage 1, files -> validated dataset: the FashionDataset reader (dataset.py), the decode cache (images.py) with its
resize policies (resize.py), the demo dataset (demo.py), prediction files (predictions.py) and stratified folds
(folds.py). Nothing here imports torch."""
from __future__ import annotations

import os
from pathlib import Path

from bench.data.dataset import (ATTRIBUTES, DEFAULT_CLASS_NAMES, LABELLED_SPLITS, SPLITS, DatasetError, FashionDataset,
                                Split, attribute_names, attributes_of, cache_home, class_counts, open_dataset,
                                parse_label_lines)
from bench.data.predictions import DEFAULT_NUM_CLASSES, format_predictions, read_predictions

__all__ = ["ATTRIBUTES", "DEFAULT_CLASS_NAMES", "DEFAULT_NUM_CLASSES", "LABELLED_SPLITS", "SPLITS", "DatasetError",
           "FashionDataset", "Split", "attribute_names", "attributes_of", "cache_home", "class_counts",
           "format_predictions", "open_dataset",
           "parse_label_lines", "read_predictions", "resolve_root"]


def resolve_root(data: str | None) -> Path:
    """--data PATH, else $FASHION_DATA, else the built-in demo set (generated once)."""
    if data:
        return Path(data)
    if os.environ.get("FASHION_DATA"):
        return Path(os.environ["FASHION_DATA"])
    from bench.data.demo import ensure_demo
    return ensure_demo()
