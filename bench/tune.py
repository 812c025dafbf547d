"""Optuna study over the recipe: learning rate, regularisation, loss scheme; pruned, resumable, shareable.

    python -m bench.tune --model resnet18 --trials 50 [--objective overall|mean_class|both] [--pruner median]
                         [--study NAME] [--storage URL] [--data ROOT] [--epochs N]

`--trials N` means N finished (complete or pruned) trials in total: re-running continues the study and never
overshoots, and several workers started with the same --storage/--study share the work and finish exactly N.
Each trial reports validation accuracy every epoch, so weak trials are pruned early (single objective only).
Trial folders live under studies/trials/<study>/ (the package folder) and keep run.json and history.csv (no weights).
Writes reports/tune-<study>.md; `python -m bench.run --from-study NAME` trains with the best parameters.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
import warnings
from pathlib import Path

import optuna
import torch

from bench.data import DatasetError, open_dataset, resolve_root
from bench.run import ImageStore, demo_settings, resolve_recipe, train_model
from bench.trainer import pick_device
from studies import DEFAULT_STORAGE, SPACES, STUDIES_DIR, open_storage

OBJECTIVES = {"overall": ["overall_acc"], "mean_class": ["mean_class_acc"], "both": ["overall_acc", "mean_class_acc"]}
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
LIVE = (*FINISHED, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)


class SurplusTrial(Exception):
    """Raised when other workers already cover the requested number of trials."""


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, epochs // 5))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def counted(study: optuna.Study, states) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=states) if not t.user_attrs.get("surplus")]


def make_objective(model, ds, store, base_overrides, recipe_name, metrics, trials_dir, target, seed, progress):
    def objective(trial: optuna.Trial):
        ahead = [t for t in counted(trial.study, LIVE) if t.number < trial.number]
        if len(ahead) >= target:  # other workers already run the last trials: do not overshoot
            trial.set_user_attr("surplus", True)
            raise SurplusTrial
        base, _ = resolve_recipe(model, recipe_name, base_overrides)
        params = SPACES["default"](trial, base.lr)
        recipe, size = resolve_recipe(model, recipe_name, {**base_overrides, **params})
        model_dir = trials_dir / f"trial-{trial.number:04d}"

        def on_epoch(epoch: int, row: dict):
            trial.set_user_attr("epochs_run", epoch)
            if len(metrics) == 1:
                trial.report(row[metrics[0]], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}: {metrics[0]} {row[metrics[0]]:.4f}")

        try:
            meta = train_model(model, ds, store, recipe, size, model_dir, seed, progress=progress,
                               on_epoch=on_epoch, force=True, extra_meta={"study": trial.study.study_name,
                                                                          "trial": trial.number})
        finally:
            for f in model_dir.glob("*.pt"):  # weights are not kept: --from-study retrains the best recipe
                f.unlink()
            gc.collect()
            if torch.cuda.is_available():
                trial.set_user_attr("cuda_mem_allocated_mb", round(torch.cuda.memory_allocated() / 2**20, 1))
                torch.cuda.empty_cache()
        trial.set_user_attr("train_time_s", meta["train_time_s"])
        values = [meta["val"][m] for m in metrics]
        return values[0] if len(values) == 1 else values

    return objective


def run_study(study: optuna.Study, objective, target: int, poll: float = 2.0, log=print) -> None:
    """One worker: run trials until the study holds `target` finished trials."""
    while True:
        finished = counted(study, FINISHED)
        if len(finished) >= target:
            return
        live = counted(study, LIVE)
        waiting = [t for t in live if t.state == optuna.trial.TrialState.WAITING]
        if len(live) >= target and not waiting:
            # the remaining trials run in other workers; wait for them (a dead worker's trial goes stale, is
            # failed by the heartbeat check below and re-queued as WAITING, and then this worker runs it)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # no-op for storages without heartbeats
            time.sleep(poll)
            continue
        log(f"[tune] {len(finished)}/{target} trials finished; starting another")
        study.optimize(objective, n_trials=1, catch=(SurplusTrial,), gc_after_trial=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--trials", type=int, default=50, help="finished trials the study should hold in total")
    p.add_argument("--objective", default="overall", choices=list(OBJECTIVES))
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"])
    p.add_argument("--study", help="study name (default: <model>-<objective>)")
    p.add_argument("--storage", help="SQLAlchemy URL or journal:PATH (default: SQLite file studies/fashion.db)")
    p.add_argument("--heartbeat", type=int, default=30, help="seconds between worker heartbeats (SQL storages)")
    p.add_argument("--grace", type=int, help="seconds without heartbeat before a trial counts as dead (default 4x)")
    p.add_argument("--data", help="dataset root (default $FASHION_DATA, else the demo set)")
    p.add_argument("--recipe", help="base recipe (default: the model's)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the recipe's)")
    p.add_argument("--size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--pretrained", help="auto | none | PATH")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--trials-dir", default=str(STUDIES_DIR / "trials"), help="per-trial run.json/history.csv")
    p.add_argument("--out", default="reports", help="folder for tune-<study>.md and the leaderboard")
    p.add_argument("--runs-dir", default="runs", help="runs folder the leaderboard is rebuilt from")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-report", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> optuna.Study:
    a = parse_args(argv)
    metrics = OBJECTIVES[a.objective]
    name = a.study or f"{a.model}-{a.objective}"
    overrides = {"epochs": a.epochs, "size": a.size, "batch_size": a.batch_size, "pretrained": a.pretrained}
    try:
        root = resolve_root(a.data)
        ds = open_dataset(root)
        overrides = demo_settings(a.data, overrides, root)
        recipe, _ = resolve_recipe(a.model, a.recipe, overrides)
    except (DatasetError, LookupError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(a.storage, a.heartbeat, a.grace)
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                directions=["maximize"] * len(metrics),
                                sampler=optuna.samplers.TPESampler(seed=a.seed),
                                pruner=make_pruner(a.pruner, recipe.epochs))
    study.set_user_attr("model", a.model)
    study.set_user_attr("objective", metrics)
    study.set_user_attr("dataset", ds.fingerprint())
    if study.user_attrs.get("dataset") not in (None, ds.fingerprint()):
        print(f"warning: study {name} was started on another dataset", file=sys.stderr)
    store = ImageStore(ds, pick_device(a.device), progress=not a.no_progress)
    trials_dir = Path(a.trials_dir) / name
    objective = make_objective(a.model, ds, store, overrides, a.recipe, metrics, trials_dir, a.trials, a.seed,
                               not a.no_progress)
    try:
        run_study(study, objective, a.trials)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished trials are stored in {a.storage or DEFAULT_STORAGE}; "
              f"the same command continues the study", file=sys.stderr)
        raise SystemExit(130)
    done = counted(study, FINISHED)
    print(f"[tune] study {name}: {len(done)} finished trials "
          f"({sum(t.state == optuna.trial.TrialState.PRUNED for t in done)} pruned)")
    if not a.no_report:
        from bench.report import build_report
        from bench.tune_report import write_tune_report
        write_tune_report(study, Path(a.out))
        build_report(a.runs_dir, a.out)
    return study


if __name__ == "__main__":
    main()
