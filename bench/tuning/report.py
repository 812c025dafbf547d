"""reports/tune-<study>.md: best parameters, trials table, parameter importances and optuna's plots."""
from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pandas as pd
from matplotlib.ticker import MaxNLocator

from bench.artifacts import atomic_write
from bench.plots import plt
from bench.reporting.leaderboard import markdown_table, slug
from bench.tuning.storage import pick_best


def fmt(v):
    """Parameter values as text: six significant digits, so loss_beta 0.9999 does not read as 1."""
    return f"{v:.6g}" if isinstance(v, float) else v


def integer_x(ax) -> None:
    """Trial numbers and epochs are whole: no 2.5 ticks."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def slanted_x(ax) -> None:
    """Parameter names under the parallel-coordinate axes overlap when written flat."""
    for label in ax.get_xticklabels():
        label.set(rotation=30, ha="right")


def _plot(fn, study, path: Path, tidy=None, size=(8, 4.5), **kw) -> str | None:
    """Draw one of optuna's plots to `path`; None when drawn, else the error that stopped it (named, not hidden)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ax = fn(study, **kw)
        if tidy:
            tidy(ax)
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(*size)
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80))
        plt.close(fig)
        return None
    except Exception as e:
        plt.close("all")
        return f"could not be drawn ({type(e).__name__}: {e})"


def seconds(t: optuna.trial.FrozenTrial) -> str:
    """Run time; "-" for a trial failed by another worker's heartbeat check, whose end is when the failure was
    noticed (a grace period after the worker died), not when it stopped running."""
    timed = t.state != optuna.trial.TrialState.FAIL or "error" in t.user_attrs  # "error": failed in its own worker
    return f"{t.duration.total_seconds():.0f}" if t.duration and timed else "-"


def trials_frame(study: optuna.Study, trials: list[optuna.trial.FrozenTrial] | None = None) -> pd.DataFrame:
    """One row per trial (`trials`: the study's, when already read)."""
    rows = []
    for t in study.get_trials(deepcopy=False) if trials is None else trials:
        if t.user_attrs.get("surplus"):
            continue
        row = {"trial": t.number, "state": t.state.name,
               "value": ", ".join(f"{v:.4f}" for v in t.values) if t.values else "-",
               "epochs": t.user_attrs.get("epochs_run", "-"), "seconds": seconds(t),
               "retry of": t.system_attrs.get("failed_trial", "")}
        row.update({k: fmt(v) for k, v in t.params.items()})
        if "error" in t.user_attrs:
            row["error"] = t.user_attrs["error"]
        rows.append(row)
    return pd.DataFrame(rows)


def write_tune_report(study: optuna.Study, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    name = slug(study.study_name)
    files = out / f"tune-{name}_files"
    files.mkdir(exist_ok=True)
    trials = study.get_trials(deepcopy=False)  # once: every get_trials is a storage read (SQLite, PostgreSQL)
    df = trials_frame(study, trials)
    metrics = study.user_attrs.get("objective", ["value"])
    states = df["state"].value_counts().to_dict() if len(df) else {}
    md = [f"# Study `{study.study_name}`", "",
          f"Model `{study.user_attrs.get('model', '?')}`, objective {' and '.join(f'`{m}`' for m in metrics)} "
          f"(maximised), dataset `{study.user_attrs.get('dataset', '?')}`. Trials: "
          + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) + ".", ""]
    if "budget" in study.user_attrs:
        md += ["Trial budget: " + ", ".join(f"{k} {v}" for k, v in study.user_attrs["budget"].items()) + ".", ""]
    try:
        best = pick_best(study)
        md += ["## Best parameters", "", f"Trial #{best.number}: " + ", ".join(f"{v:.4f}" for v in best.values), "",
               markdown_table(pd.DataFrame([{"parameter": k, "value": fmt(v)} for k, v in best.params.items()]),
                              [("parameter", "parameter"), ("value", "value")]), "",
               f"Train with them: `python -m bench.run --models {study.user_attrs.get('model', 'MODEL')} "
               f"--from-study {study.study_name}`", ""]
    except ValueError:
        md += ["_No completed trial yet._", ""]
    single = len(study.directions) == 1
    if single:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(study)
            md += ["## Parameter importances", "", "Optuna's default importance evaluator; rough with few trials.", "",
                   markdown_table(pd.DataFrame([{"p": k, "i": f"{v:.3f}"} for k, v in imp.items()]),
                                  [("p", "parameter"), ("i", "importance")]), ""]
        except Exception:
            md += ["## Parameter importances", "", "_Needs at least two completed trials with varied parameters._", ""]
    vis = optuna.visualization.matplotlib
    plots = ([("optimization-history", vis.plot_optimization_history, {"tidy": integer_x}),
              ("parallel-coordinate", vis.plot_parallel_coordinate, {"tidy": slanted_x, "size": (11, 5.5)}),
              ("intermediate-values", vis.plot_intermediate_values, {"tidy": integer_x})] if single else
             [("pareto-front", vis.plot_pareto_front, {"target_names": metrics})])
    md += ["## Plots", ""]
    for title, fn, kw in plots:
        path = files / f"{title}.png"
        # optuna draws empty axes rather than fail when there is nothing to plot: say why instead
        if not any(t.state == optuna.trial.TrialState.COMPLETE for t in trials):
            why_not = "no completed trial yet"
        elif title == "intermediate-values" and not any(t.intermediate_values for t in trials):
            why_not = "no trial has reported a per-epoch score yet"
        else:
            why_not = _plot(fn, study, path, **kw)
        if why_not is None:
            md += [f"![{title}]({files.name}/{title}.png)", ""]
        else:
            path.unlink(missing_ok=True)  # a plot from an earlier build would no longer match the study
            md += [f"_{title}: {why_not}._", ""]
    if len(df):
        cols = [(c, c) for c in df.columns]
        md += ["## Trials", "", markdown_table(df.fillna(""), cols), ""]
    path = out / f"tune-{name}.md"
    text = "\n".join(md).rstrip() + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    print(f"report: {path}")
    return path
