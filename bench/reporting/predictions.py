"""Which val predictions an entry shows, and at which views: decided here once, and asked by every reader (the
leaderboard's columns, the galleries, scripts/distill_table.py), so that a column can never disagree with the one
beside it.

An entry has two columns of predictions, compared like with like across entries:
- `main`, the plain view (no test-time augmentation): a model's argmax of its plain probabilities; an ensemble's
  `pred_plain` (its decision rule on its members' plain probabilities, out-of-fold when it was cross-validated). An
  ensemble written before ensembles stored that twin has only its declared-view predictions; its `main` column is
  then at those views, and `views` says so.
- `tta`, the entry at its declared views: a model's argmax of the mean of its plain and flip probabilities; an
  ensemble's `pred` (its rule at its `--tta` views). An ensemble whose declared views are plain only, or that has
  only its declared-view predictions, has one column: `tta` is then `main` (it is at its declared views in both
  comparisons, so the TTA table's leader is never a model an ensemble at its own views beats). None only for a
  model without stored flip probabilities.

Each column carries the probability of each predicted class where the entry stored one (`conf`), and at which views
that probability was computed (`conf_views`): an ensemble written before 2026-12-07 stored its combined
probabilities at its declared views only, so its plain-view predictions come with those probabilities, and the
column says so; later ones also store the plain view's (`plain_view`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.metrics import split_probs


@dataclass(frozen=True)
class Column:
    """One set of an entry's predictions: (N, A) class indices, the views they were made at, how probabilities
    became predictions (`rule`), and the probability of each predicted class (`conf`, (N, A)) at `conf_views`."""
    pred: np.ndarray
    views: str
    rule: str
    conf: np.ndarray
    conf_views: str


@dataclass(frozen=True)
class Shown:
    """An entry's columns: `main` (the plain view; an old ensemble's declared views) and `tta` (its declared views;
    the same column as `main` for an ensemble with one column; None for a model without flip probabilities)."""
    main: Column
    tta: Column | None


def _conf(parts: list[np.ndarray], pred: np.ndarray) -> np.ndarray:
    return np.stack([p[np.arange(len(p)), pred[:, a]] for a, p in enumerate(parts)], 1)


def _argmax(probs: np.ndarray, nc, views: str) -> Column:
    parts = split_probs(probs, nc)
    pred = np.stack([p.argmax(1) for p in parts], 1)
    return Column(pred, views, "argmax", _conf(parts, pred), views)


def _one(column: Column) -> Shown:
    """An ensemble with one column (at its declared views): its main and its TTA column."""
    return Shown(column, column)


def shown(kind: str, meta: dict, probs: dict) -> Shown:
    """The columns of an entry (`kind` model or ensemble, its run.json `meta`, its probs_val.npz arrays `probs`), as
    the module docstring says."""
    nc = tuple(meta["num_classes"])
    if kind == "ensemble":
        declared = "+".join(meta.get("views", ["plain"]))
        rule = meta.get("decision", "argmax")
        parts = split_probs(probs["plain"], nc)  # the ensemble's combined probabilities at its declared views

        def column(pred, views):
            return Column(pred, views, rule, _conf(parts, pred), declared)

        if "pred" not in probs:  # no stored decisions: the argmax of its combined probabilities
            return _one(_argmax(probs["plain"], nc, declared))
        if declared == "plain":
            return _one(column(probs["pred"], "plain"))
        if "pred_plain" in probs:
            tta = column(probs["pred"], declared)
            if "plain_view" in probs:  # entries since 2026-12-07 also store the plain view's probabilities
                pred = probs["pred_plain"]
                main = Column(pred, "plain", rule, _conf(split_probs(probs["plain_view"], nc), pred), "plain")
                return Shown(main, tta)
            return Shown(column(probs["pred_plain"], "plain"), tta)
        return _one(column(probs["pred"], declared))  # an entry made before the plain-view twin was stored
    main = _argmax(probs["plain"], nc, "plain")
    tta = _argmax((probs["plain"] + probs["flip"]) / 2, nc, "plain+flip") if "flip" in probs else None
    return Shown(main, tta)
