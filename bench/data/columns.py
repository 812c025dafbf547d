"""Which attribute names a dataset may have, and the column names the suite writes for attributes: one owner.

Every table the suite writes with one column (or more) per attribute is described here, and the writers ask this
module for their column names:
- a prediction CSV (bench.predict, bench.ensemble's prediction.csv; read by bench.score): `image`, then per attribute
  ATTRIBUTE (the class name) and ATTRIBUTE_prob, then with --probs ATTRIBUTE=CLASS per class (`prediction_columns`);
- the leaderboard CSV (bench/reporting/leaderboard.py): its own columns (`LEADERBOARD_COLUMNS`), then one accuracy
  column per attribute, named ATTRIBUTE, or acc_ATTRIBUTE where the leaderboard has a column of that name
  (`leaderboard_attribute_columns`).
A dataset whose attribute names would make two columns of one table share a name is refused when it is read
(`attribute_name_problems`, asked by the CSV layout and the demo's schema parser), before anything is trained; the
writers check again and refuse rather than overwrite a column (runs made before this check).
"""
from __future__ import annotations

IMAGE = "image"   # the image column of every CSV the suite reads or writes
SPLIT = "split"   # the CSV layout's split column

# The leaderboard CSV's columns other than the attributes' accuracy columns (bench/reporting/leaderboard.py's rows;
# tests/test_schema.py checks that a leaderboard has no other column).
LEADERBOARD_COLUMNS = frozenset({
    "rank", "entry", "kind", "init", "val_scoring", "decision", "views", "overall_acc", "ci_lo", "ci_hi",
    "class_avg_acc", "class_ci_lo", "class_ci_hi", "tta_views", "tta_overall_acc", "tta_class_avg_acc",
    "mean_class_acc", "macro_f1", "params_M", "gflops", "train_time_s", "img_per_s", "device", "leader", "n",
    "scored_on", "delta", "delta_lo", "delta_hi", "p_sign_flip", "p_holm", "tta_leader", "tta_delta", "tta_delta_lo",
    "tta_delta_hi", "tta_p_sign_flip", "tta_p_holm",
    # replicas (bench.run --seeds): a row's seeds and their spread, and which test each comparison used
    "seeds", "seed_list", "overall_seed_min", "overall_seed_max", "overall_seed_sd", "class_seed_min",
    "class_seed_max", "class_seed_sd", "p_seeds", "p_value", "tested_over", "tta_p_seeds", "tta_p_value",
    "tta_tested_over"})


class ColumnClash(ValueError):
    """Two columns of one table the suite writes would share a name."""


def _prediction_producers(attributes, class_names, probs: bool, all_probs: bool):
    """(column, what it holds, attribute index or None) of a prediction CSV, in column order."""
    out = [(IMAGE, "the image column", None)]
    for i, a in enumerate(attributes):
        out.append((a, f"the class column of attribute {a!r}", i))
        if probs:
            out.append((f"{a}_prob", f"the probability column of attribute {a!r}", i))
    if all_probs:
        for i, (a, names) in enumerate(zip(attributes, class_names)):
            out += [(f"{a}={c}", f"the column of class {c!r} of attribute {a!r} (--probs)", i) for c in names]
    return out


def _leaderboard_producers(attributes, taken=LEADERBOARD_COLUMNS):
    out = [(c, "the leaderboard's own column", None) for c in sorted(taken)]
    for i, a in enumerate(attributes):
        col = f"acc_{a}" if a in taken else a
        why = f" (renamed: the leaderboard has a column {a})" if a in taken else ""
        out.append((col, f"the accuracy column of attribute {a!r}{why}", i))
    return out


def _clashes(producers) -> dict[str, list[tuple[str, int | None]]]:
    by_name: dict[str, list[tuple[str, int | None]]] = {}
    for col, what, i in producers:
        by_name.setdefault(col, []).append((what, i))
    return {c: ps for c, ps in by_name.items() if len(ps) > 1}


def _describe(clashes: dict, table: str) -> str:
    return "; ".join(f"the {table} would have more than one column named {c} ({' and '.join(w for w, _ in ps)})"
                     for c, ps in clashes.items())


def prediction_columns(attributes, class_names=None, probs: bool = True, all_probs: bool = False) -> list[str]:
    """A prediction CSV's header: image, per attribute ATTRIBUTE (and ATTRIBUTE_prob with `probs`), then with
    `all_probs` ATTRIBUTE=CLASS per class. ColumnClash when two columns would share a name."""
    producers = _prediction_producers(attributes, class_names or [], probs, all_probs)
    clashes = _clashes(producers)
    if clashes:
        raise ColumnClash(_describe(clashes, "prediction CSV"))
    return [c for c, _, _ in producers]


def leaderboard_attribute_columns(attributes, taken=LEADERBOARD_COLUMNS) -> dict[str, str]:
    """Each attribute's accuracy column in the leaderboard: its name, or acc_<name> where the leaderboard has a
    column of that name (`taken`: the leaderboard's own columns). ColumnClash rather than two columns of one name
    (attributes `n` and `acc_n`: n's accuracy column is acc_n)."""
    producers = _leaderboard_producers(attributes, frozenset(taken))
    clashes = _clashes(producers)
    if clashes:
        raise ColumnClash(_describe(clashes, "leaderboard") + "; rename the attribute in the dataset's labels")
    return {attributes[i]: c for c, _, i in producers if i is not None}


def attribute_name_problems(attributes, class_names) -> list[tuple[int, str]]:
    """(attribute index, why) for each attribute a dataset may not have: a name the layout uses for another column
    (image, split), or one that would make two columns of a table the suite writes share a name (the prediction CSV
    with every class's probability, the leaderboard). Asked when a dataset is read, before any training."""
    out = [(i, f"attribute {a!r}: the name is the {a} column of the CSV layout and of prediction files")
           for i, a in enumerate(attributes) if a in (IMAGE, SPLIT)]
    for table, producers in (("prediction CSV (bench.predict --probs, prediction.csv)",
                              _prediction_producers(attributes, class_names, True, True)),
                             ("leaderboard CSV", _leaderboard_producers(attributes))):
        for col, ps in _clashes(producers).items():
            blamed = max((i for _, i in ps if i is not None), default=None)
            if blamed is None or attributes[blamed] in (IMAGE, SPLIT):
                continue
            out.append((blamed, f"attribute {attributes[blamed]!r}: the {table} would have two columns named "
                                f"{col} ({' and '.join(w for w, _ in ps)}); rename the attribute"))
    return sorted(set(out))
