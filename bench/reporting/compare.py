"""One ranking of models across datasets (library of bench.compare): each working folder's leaderboard rows, set
side by side on one target metric.

Each folder is read as its leaderboard is (bench/reporting/leaderboard.py `collect`: its runs of the dataset with the
most runs, replica sets as one row each); a dataset is named by its folder and fingerprint. Models are the rows of
trained models scored on val (no ensembles, no baselines, no out-of-fold k-fold members: their scores are over other
images), matched across datasets by model name, recipe and image size (`model_key`). Where one dataset holds several
rows of one key (e.g. `default/resnet18` and replicas `r/resnet18-seed*`), the row with the most seeds is taken,
then the latest; the page names the others.

Ranks are per dataset over the models present on every dataset (the complete block; 1 = best, ties averaged), then
averaged; a model missing somewhere is listed with its scores but not ranked. With 3 or more datasets and 3 or more
ranked models, a Friedman test (scipy) asks whether the ranks differ at all, and scikit-posthocs draws the
critical-difference diagram of its Nemenyi post-hoc test (Demšar, JMLR 2006): models joined by a bar are not
distinguishable at 5%. Refused (CompareError, nothing written): fewer than two folders, two folders of one dataset
fingerprint, no model on every dataset.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.artifacts import atomic_write
from bench.metrics import TARGETS
from bench.stats import format_p
from bench.reporting.leaderboard import (Entry, collect, describe_dataset, markdown_table, metric_title,
                                         row_interval, runs_of)

LEVEL = 0.05


class CompareError(ValueError):
    """A cross-dataset comparison that cannot be made; says why."""


@dataclass
class Score:
    label: str
    value: float
    lo: float
    hi: float
    seeds: int


@dataclass
class DatasetScores:
    folder: Path
    fingerprint: str
    name: str       # folder and fingerprint, as the leaderboard names it
    short: str      # the column title: data folder name and the fingerprint's first 8 characters
    n: int
    rows: dict[tuple, Score] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def runs_folder(folder: str | Path) -> Path:
    """A working folder's runs/ (or the folder itself when it is a runs folder)."""
    folder = Path(folder)
    return folder / "runs" if (folder / "runs").is_dir() else folder


def model_key(meta: dict) -> tuple:
    """What matches a model across datasets: its name, recipe and image size."""
    config = meta.get("config") or {}
    return (config.get("model") or meta.get("name"), (config.get("recipe") or {}).get("name"), config.get("size"))


def key_label(key: tuple) -> str:
    model, recipe, size = key
    return f"`{model}` ({recipe or 'recipe ?'}, {size or '?'} px)"


def read_dataset(folder: str | Path, metric: str) -> DatasetScores:
    """One folder's rows on `metric` (module docstring); CompareError when it has nothing to rank."""
    runs = runs_folder(folder)
    entries, notes, fp = collect(runs)
    if not entries:
        raise CompareError(f"{folder}: no finished runs with scored val probabilities under {runs}")
    data = describe_dataset(entries, fp)
    root = next((e.meta.get("data_root") for e in entries if e.meta.get("data_root")), None)
    short = f"{Path(root).name if root else Path(folder).name} ({fp[:8]})"
    base = next(e for e in entries if "labels" in e.extra)
    labels, nc = base.extra["labels"], tuple(base.meta["num_classes"])
    out = DatasetScores(Path(folder), fp, data.name, short, len(labels),
                        notes=[f"{short}: {n}" for n in notes if "another dataset" in n])
    chosen: dict[tuple, list[Entry]] = {}
    for e in entries:
        if e.kind == "model" and e.meta.get("scored_on", "val") == "val":
            chosen.setdefault(model_key(e.meta), []).append(e)
    key = TARGETS[metric]
    for k, rows in chosen.items():
        best = max(rows, key=lambda e: (len(runs_of(e)), str(e.meta.get("finished", ""))))
        if len(rows) > 1:
            out.notes.append(f"{short}: {key_label(k)} has {len(rows)} rows; ranked `{best.label}` (most seeds, then "
                             f"the latest), not {', '.join(f'`{e.label}`' for e in rows if e is not best)}")
        lo, hi, _ = row_interval(best, labels, nc, metric)
        out.rows[k] = Score(best.label, best.score[key], lo, hi, len(runs_of(best)))
    if not out.rows:
        raise CompareError(f"{folder}: no trained model scored on val under {runs} (ensembles, baselines and "
                           f"k-fold members are not ranked across datasets)")
    return out


@dataclass
class Ranking:
    datasets: list[DatasetScores]
    complete: list[tuple]          # keys on every dataset, best average rank first
    partial: list[tuple]           # keys missing on some dataset
    ranks: pd.DataFrame            # datasets x complete keys
    average: pd.Series             # complete key -> average rank
    friedman: tuple[float, float] | None = None   # (statistic, p)
    nemenyi: pd.DataFrame | None = None           # p-values, complete keys x complete keys
    why_no_test: str | None = None


def rank(datasets: list[DatasetScores], metric: str) -> Ranking:
    """Average ranks over the complete block, and the Friedman and Nemenyi tests where they apply."""
    from scipy import stats
    keys = list(dict.fromkeys(k for d in datasets for k in d.rows))
    complete = [k for k in keys if all(k in d.rows for d in datasets)]
    if not complete:
        raise CompareError("no model is on every dataset (matched by model name, recipe and size): "
                           + "; ".join(f"{d.short}: {', '.join(key_label(k) for k in d.rows)}" for d in datasets))
    values = np.array([[d.rows[k].value for k in complete] for d in datasets])
    ranks = pd.DataFrame([stats.rankdata(-v) for v in values], index=[d.short for d in datasets],
                         columns=[key_label(k) for k in complete])
    average = pd.Series(ranks.mean(axis=0).values, index=complete)
    order = sorted(complete, key=lambda k: (average[k], key_label(k)))
    out = Ranking(datasets, order, [k for k in keys if k not in complete], ranks[[key_label(k) for k in order]],
                  average[order])
    if len(datasets) < 3 or len(complete) < 3:
        out.why_no_test = (f"{len(datasets)} datasets and {len(complete)} models on all of them: the Friedman test "
                           f"and its critical-difference diagram need 3 or more of each")
        return out
    if np.ptp(values, axis=1).max() == 0:
        out.why_no_test = "every model scores the same on every dataset: nothing to test"
        return out
    stat, p = stats.friedmanchisquare(*values.T)
    out.friedman = (float(stat), float(p))
    try:
        import scikit_posthocs as sp
    except ImportError:
        out.why_no_test = ("the critical-difference diagram needs scikit-posthocs: pip install -e '.[compare]'")
        return out
    nem = sp.posthoc_nemenyi_friedman(pd.DataFrame(values, columns=[key_label(k) for k in complete]))
    out.nemenyi = nem.loc[[key_label(k) for k in order], [key_label(k) for k in order]]
    return out


def cd_diagram(r: Ranking, path: Path) -> bool:
    """The critical-difference diagram (scikit-posthocs) of `r`'s Nemenyi test; False when there is none."""
    if r.nemenyi is None:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scikit_posthocs as sp
    ranks = {key_label(k).replace("`", ""): float(v) for k, v in r.average.items()}
    sig = r.nemenyi.copy()
    sig.index = sig.columns = [c.replace("`", "") for c in sig.columns]
    width = 6 + 0.12 * max(len(k) for k in ranks)  # the labels stand outside the axis, left and right of it
    fig, ax = plt.subplots(figsize=(width, 1.4 + 0.35 * len(ranks)), dpi=80)
    sp.critical_difference_diagram(ranks, sig, ax=ax, alpha=LEVEL)
    ax.set_title(f"average rank over {len(r.datasets)} datasets (bars: not distinguishable, Nemenyi 5%)", pad=24)
    side = min(0.45, 0.012 * max(len(k) for k in ranks) * 8 / width + 0.04)
    fig.subplots_adjust(left=side, right=1 - side, top=1 - 0.9 / (1.4 + 0.35 * len(ranks)), bottom=0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp))
    plt.close(fig)
    return True


def render(r: Ranking, metric: str, folders: list[str], figure: str | None) -> list[str]:
    key = TARGETS[metric]
    title = metric_title(key, describe_challenge(r))
    cell = {}
    for k in [*r.complete, *r.partial]:
        cell[k] = {}
        for d in r.datasets:
            s = d.rows.get(k)
            cell[k][d.short] = "-" if s is None else \
                f"{s.value:.4f} [{s.lo:.3f}, {s.hi:.3f}]" + (f" ({s.seeds} seeds)" if s.seeds > 1 else "")
    table = pd.DataFrame([{"model": key_label(k), **cell[k],
                           "rank": f"{r.average[k]:.2f}" if k in r.average else "not ranked"}
                          for k in [*r.complete, *r.partial]])
    md = ["# Models across datasets", "",
          f"{len(r.complete)} model(s) on all {len(r.datasets)} datasets, ranked on {title} (`{key}`) by average "
          f"rank (1 = best on a dataset): " + ", ".join(f"{key_label(k)} {r.average[k]:.2f}" for k in r.complete)
          + ". " + friedman_sentence(r), "",
          "## Datasets", "",
          markdown_table(pd.DataFrame([{"col": f"`{d.short}`", "name": d.name, "folder": f"`{d.folder}`",
                                        "n": d.n, "models": len(d.rows)} for d in r.datasets]),
                         [("col", "column"), ("name", "dataset"), ("folder", "working folder"),
                          ("n", "val images"), ("models", "models")]), "",
          f"## {title[0].upper() + title[1:]} per model and dataset", "",
          markdown_table(table, [("model", "model (recipe, size)"), *[(d.short, f"`{d.short}`") for d in r.datasets],
                                 ("rank", "average rank")]), ""]
    if r.partial:
        md += [f"Not ranked (missing on some dataset; the ranks are over the {len(r.complete)} models on every "
               f"dataset): " + "; ".join(f"{key_label(k)}, missing on "
                                        + ", ".join(f"`{d.short}`" for d in r.datasets if k not in d.rows)
                                        for k in r.partial) + ".", ""]
    md += ["## Ranks per dataset", "", markdown_table(
        r.ranks.T.map(lambda v: f"{v:g}").reset_index().rename(columns={"index": "model"}),
        [("model", "model (recipe, size)"), *[(d.short, f"`{d.short}`") for d in r.datasets]]), ""]
    if figure:
        md += [f"![critical-difference diagram]({figure})", ""]
    notes = [n for d in r.datasets for n in d.notes]
    md += ["## How to read this page", "",
           "- Each cell is the model's leaderboard row on that dataset's val split: its score with the 95% interval "
           "the leaderboard gives it (over images; a row of replicas, `bench.run --seeds`, is the mean over its "
           "seeds with an interval over seeds and images).",
           "- Models match across datasets by model name, recipe and image size; ensembles, the majority baseline and "
           "out-of-fold k-fold members are not ranked. A dataset is its folder and fingerprint.",
           "- Ranks are per dataset over the models on every dataset (1 = best, ties averaged), then averaged "
           "(Demšar, JMLR 2006). The Friedman test (scipy) asks whether any model's ranks differ from the others'; "
           "the critical-difference diagram (scikit-posthocs, Nemenyi post-hoc test) joins models whose average "
           "ranks are not distinguishable at 5%. With few datasets these tests have little power: a model better on "
           "every dataset by a hair ranks first everywhere, a large gain on one dataset counts one rank.",
           f"- Built by `python -m bench.compare` from {', '.join(f'`{f}`' for f in folders)}.", ""]
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return md


def describe_challenge(r: Ranking):
    """Metric names carry the challenge years only when every dataset is a FashionDataset-layout one."""
    from bench.reporting.leaderboard import Dataset
    return Dataset(all("FashionDataset layout" in d.name for d in r.datasets), "")


def friedman_sentence(r: Ranking) -> str:
    if r.friedman is None:
        return f"No Friedman test: {r.why_no_test}."
    stat, p = r.friedman
    verdict = "the ranks differ" if p < LEVEL else "the ranks are not distinguishable from chance"
    tail = f" {r.why_no_test}." if r.why_no_test else " The critical-difference diagram below joins the models it " \
                                                       "cannot tell apart."
    return (f"Friedman test over {len(r.datasets)} datasets: chi-square {stat:.2f}, p {format_p(p, 3, LEVEL)} "
            f"({verdict} at 5%).{tail}")


def build_compare(folders: list[str | Path], out: str | Path, metric: str = "overall", quiet: bool = False) -> Path:
    """Write OUT/compare.md (and OUT/compare_files/cd.png) ranking the models of `folders` (working or runs
    folders, one dataset each) on `metric`; CompareError before anything is written when they cannot be compared."""
    if metric not in TARGETS:
        raise CompareError(f"unknown metric {metric!r}; choose one of {', '.join(TARGETS)}")
    distinct = list(dict.fromkeys(Path(f).resolve() for f in folders))
    if len(distinct) < 2:
        raise CompareError(f"{len(distinct)} folder ({', '.join(map(str, folders)) or 'none'}): a comparison across "
                           f"datasets needs two or more working folders, one per dataset")
    datasets = [read_dataset(f, metric) for f in folders]
    seen: dict[str, DatasetScores] = {}
    for d in datasets:
        if d.fingerprint in seen:
            raise CompareError(f"{seen[d.fingerprint].folder} and {d.folder} hold the same dataset (fingerprint "
                               f"{d.fingerprint}): each folder must be another dataset; merge their runs into one "
                               f"folder's leaderboard instead")
        seen[d.fingerprint] = d
    r = rank(datasets, metric)
    out = Path(out)
    figure = "compare_files/cd.png" if cd_diagram(r, out / "compare_files/cd.png") else None
    path = out / "compare.md"
    text = "\n".join(render(r, metric, [str(f) for f in folders], figure)).rstrip() + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    if not quiet:
        print(f"compare: {path} ({len(r.complete)} models on {len(datasets)} datasets; best average rank "
              f"{key_label(r.complete[0])} {r.average.iloc[0]:.2f})", file=sys.stdout)
    return path
