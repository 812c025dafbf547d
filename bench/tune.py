"""Optuna study over the recipe: learning rate, regularisation, loss scheme; pruned, resumable, shareable.

    python -m bench.tune --model resnet18 --trials 50 [--objective overall|mean_class|both] [--pruner median]
                         [--study NAME] [--storage URL] [--data ROOT] [--epochs N] [--sampler-seed N]

`--trials N` means N finished (complete or pruned) trials in total: re-running continues the study and never
overshoots, and several workers started with the same --storage/--study share the work and finish exactly N.
Each trial reports validation accuracy every epoch, so weak trials are pruned early (single objective only).
A trial whose loss goes non-finite is recorded as failed (its reason in the trial's `error` attribute) and replaced;
a worker stops after --trials such failures. Every trial trains with the same --seed, so trials compare recipes,
not seeds; the sampler gets a fresh seed per worker and per resume (printed, and kept as the trial attribute
`sampler_seed`) so that workers and resumes propose new parameters; --sampler-seed fixes it.
Trial folders live under studies/trials/<study>/ (the package folder) and keep run.json and history.csv (no weights).
Writes reports/tune-<study>.md; `python -m bench.run --from-study NAME` trains with the best parameters and the
study's trial budget (epochs, size, batch size, init), flags given there still winning.
"""
from __future__ import annotations

import argparse
import gc
import secrets
import sys
import time
import warnings
from pathlib import Path

import optuna

from bench.data import DatasetError, open_dataset, resolve_root
from bench.errors import NonFiniteLoss
from studies import DEFAULT_STORAGE, SPACES, STUDIES_DIR, open_storage

OBJECTIVES = {"overall": ["overall_acc"], "mean_class": ["mean_class_acc"], "both": ["overall_acc", "mean_class_acc"]}
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
LIVE = (*FINISHED, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
BUDGET = ("epochs", "size", "batch_size", "pretrained")  # what a trial was trained with besides the tuned params


class SurplusTrial(Exception):
    """Raised when other workers already cover the requested number of trials."""


class StudyStopped(RuntimeError):
    """Raised when a worker gives up before the study holds its finished trials."""


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, epochs // 5))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def counted(study: optuna.Study, states) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=states) if not t.user_attrs.get("surplus")]


def budget_of(recipe, size: int) -> dict:
    return {"epochs": recipe.epochs, "size": size, "batch_size": recipe.batch_size, "pretrained": recipe.pretrained}


def make_objective(model, ds, store, base_overrides, recipe_name, metrics, trials_dir, target, seed, progress,
                   sampler_seed=None):
    import torch

    from bench.training import resolve_recipe, train_model

    def objective(trial: optuna.Trial):
        ahead = [t for t in counted(trial.study, LIVE) if t.number < trial.number]
        if len(ahead) >= target:  # other workers already run the last trials: do not overshoot
            trial.set_user_attr("surplus", True)
            raise SurplusTrial
        if sampler_seed is not None:
            trial.set_user_attr("sampler_seed", sampler_seed)
        base, _ = resolve_recipe(model, recipe_name, base_overrides)
        params = SPACES["default"](trial, base.lr)
        recipe, size = resolve_recipe(model, recipe_name, {**base_overrides, **params})
        trial.set_user_attr("budget", budget_of(recipe, size))  # --from-study retrains with it
        model_dir = trials_dir / f"trial-{trial.number:04d}"

        def on_epoch(epoch: int, row: dict):
            trial.set_user_attr("epochs_run", epoch)
            if len(metrics) == 1:
                trial.report(row[metrics[0]], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}: {metrics[0]} {row[metrics[0]]:.4f}")

        try:
            meta = train_model(model, ds, store, recipe, size, model_dir, seed, progress=progress,
                               on_epoch=on_epoch, force=True, persist=False,  # no weights or state written
                               extra_meta={"study": trial.study.study_name, "trial": trial.number})
        except NonFiniteLoss as e:  # a diverging recipe is a result, not a crash: the trial fails, the study goes on
            trial.set_user_attr("error", f"non-finite loss: {e}")
            raise
        finally:
            gc.collect()
            if torch.cuda.is_available():
                trial.set_user_attr("cuda_mem_allocated_mb", round(torch.cuda.memory_allocated() / 2**20, 1))
                torch.cuda.empty_cache()
        trial.set_user_attr("train_time_s", meta["train_time_s"])
        values = [meta["val"][m] for m in metrics]
        return values[0] if len(values) == 1 else values

    return objective


def has_heartbeat(study: optuna.Study) -> bool:
    # optuna has no public accessor for a study's storage; fail_stale_trials does the same check
    from optuna.storages._heartbeat import is_heartbeat_enabled
    return is_heartbeat_enabled(study._storage)


def run_study(study: optuna.Study, objective, target: int, poll: float = 2.0, log=print,
              timeout: float = 600.0) -> None:
    """One worker: run trials until the study holds `target` finished trials.

    Raises StudyStopped after `target` of this worker's trials failed (non-finite loss), or when, on a storage
    without heartbeats, the trials running elsewhere made no progress for `timeout` seconds."""
    failed = []

    def note(_, trial):  # this worker's trials that diverged
        if trial.user_attrs.get("error"):
            failed.append(trial.number)

    stalled, since = None, time.monotonic()
    while True:
        finished = counted(study, FINISHED)
        if len(finished) >= target:
            return
        if len(failed) >= target:  # every recipe diverges: retrying would loop forever
            raise StudyStopped(f"{len(failed)} trials of this worker failed ({', '.join(f'#{n}' for n in failed)}), "
                               f"see their `error` attribute; check the search space and the base recipe")
        live = counted(study, LIVE)
        waiting = [t for t in live if t.state == optuna.trial.TrialState.WAITING]
        if len(live) >= target and not waiting:
            # the remaining trials run in other workers; wait for them (a dead worker's trial goes stale, is
            # failed by the heartbeat check below and re-queued as WAITING, and then this worker runs it)
            if has_heartbeat(study):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
            else:  # without heartbeats a dead worker's trial stays RUNNING forever: bound the wait
                running = tuple(t.number for t in live if t.state == optuna.trial.TrialState.RUNNING)
                if running != stalled:
                    stalled, since = running, time.monotonic()
                elif time.monotonic() - since > timeout:
                    raise StudyStopped(
                        f"gave up after {timeout:.0f} s waiting for trial(s) {', '.join(f'#{n}' for n in running)} "
                        f"running in other workers; this storage has no heartbeat, so if their worker died they "
                        f"stay RUNNING forever (raise --trials to run replacements). Use an SQL storage "
                        f"(sqlite:///PATH or postgresql://...), which has heartbeats and retries dead workers' trials")
            time.sleep(poll)
            continue
        stalled = None
        log(f"[tune] {len(finished)}/{target} trials finished; starting another")
        study.optimize(objective, n_trials=1, catch=(SurplusTrial, NonFiniteLoss), callbacks=[note],
                       gc_after_trial=True)


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
    p.add_argument("--wait-timeout", type=float, default=600,
                   help="storages without heartbeat (journal:): seconds to wait for other workers' stalled trials")
    p.add_argument("--data", help="dataset root (default $FASHION_DATA, else the demo set)")
    p.add_argument("--recipe", help="base recipe (default: the model's)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the recipe's)")
    p.add_argument("--size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--pretrained", help="auto | none | PATH")
    p.add_argument("--seed", type=int, default=0, help="training seed, the same for every trial")
    p.add_argument("--sampler-seed", type=int,
                   help="seed of the parameter sampler (default: a fresh random one per worker and resume; a fixed "
                        "one repeats the same proposals when given to two workers or resumes)")
    p.add_argument("--device", default="auto")
    p.add_argument("--trials-dir", default=str(STUDIES_DIR / "trials"), help="per-trial run.json/history.csv")
    p.add_argument("--out", default="reports", help="folder for tune-<study>.md")
    p.add_argument("--runs-dir", default="runs", help="runs folder the leaderboard is rebuilt from")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-report", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> optuna.Study:
    a = parse_args(argv)
    from bench.trainer import pick_device  # torch loads after the arguments are parsed (fast --help)
    from bench.training import ImageStore, demo_settings, resolve_recipe
    metrics = OBJECTIVES[a.objective]
    name = a.study or f"{a.model}-{a.objective}"
    overrides = {"epochs": a.epochs, "size": a.size, "batch_size": a.batch_size, "pretrained": a.pretrained}
    try:
        root = resolve_root(a.data)
        ds = open_dataset(root)
        overrides = demo_settings(a.data, overrides, root)
        recipe, size = resolve_recipe(a.model, a.recipe, overrides)
    except (DatasetError, LookupError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(a.storage, a.heartbeat, a.grace)
    # a fixed sampler seed would make every worker and every resume propose the same parameters again
    sampler_seed = secrets.randbits(31) if a.sampler_seed is None else a.sampler_seed
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                directions=["maximize"] * len(metrics),
                                sampler=optuna.samplers.TPESampler(seed=sampler_seed),
                                pruner=make_pruner(a.pruner, recipe.epochs))
    budget = budget_of(recipe, size)
    for key, value, what in (("dataset", ds.fingerprint(), "another dataset"), ("budget", budget, "another budget")):
        if study.user_attrs.get(key, value) != value:  # the first run's value stays: it describes the study
            print(f"warning: study {name} was started on {what} ({key} {study.user_attrs[key]}, now {value})",
                  file=sys.stderr)
        elif key not in study.user_attrs:
            study.set_user_attr(key, value)
    study.set_user_attr("model", a.model)
    study.set_user_attr("recipe", recipe.name)  # the base the tuned values sit on: --from-study trains on it too
    study.set_user_attr("objective", metrics)
    print(f"[tune] study {name}: sampler seed {sampler_seed}, training seed {a.seed}, trial budget {budget}")
    store = ImageStore(ds, pick_device(a.device), progress=not a.no_progress)
    trials_dir = Path(a.trials_dir) / name
    objective = make_objective(a.model, ds, store, overrides, a.recipe, metrics, trials_dir, a.trials, a.seed,
                               not a.no_progress, sampler_seed)
    stopped = None
    try:
        run_study(study, objective, a.trials, timeout=a.wait_timeout)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished trials are stored in {a.storage or DEFAULT_STORAGE}; "
              f"the same command continues the study", file=sys.stderr)
        raise SystemExit(130)
    except StudyStopped as e:
        stopped = e
    done = counted(study, FINISHED)
    failed = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("error")]
    print(f"[tune] study {name}: {len(done)} finished trials "
          f"({sum(t.state == optuna.trial.TrialState.PRUNED for t in done)} pruned, {len(failed)} failed)")
    if not a.no_report:
        from bench.report import build_report
        from bench.tune_report import write_tune_report
        write_tune_report(study, Path(a.out))
        build_report(a.runs_dir)
    if stopped:
        print(f"error: {stopped}", file=sys.stderr)
        raise SystemExit(1)
    return study


if __name__ == "__main__":
    main()
