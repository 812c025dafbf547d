"""The tuning library behind bench.tune: objective, worker loop and pruners over an Optuna study.

A trial trains one model through the training library (bench.training.train.train_model, nothing persisted but
run.json and history.csv), with recipe overrides from a search space (spaces.py). Workers sharing a study count
finished trials together so the study never overshoots; see bench/tune.py for the user-facing behaviour.
"""
from __future__ import annotations

import gc
import time
import warnings

import optuna

from bench.errors import NonFiniteLoss
from bench.tracking import NullTracker
from bench.tuning.spaces import SPACES

# --metric -> the val scores a trial returns: the two challenge metrics, alone or as a Pareto front (`both`);
# `mean_class` (balanced accuracy) is kept for studies started before the class average existed.
OBJECTIVES = {"overall": ["overall_acc"], "class": ["class_avg_acc"], "both": ["overall_acc", "class_avg_acc"],
              "mean_class": ["mean_class_acc"]}
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
                   sampler_seed=None, space: str = "default", select_metric: str | None = None, track=None):
    """`track` (bench.tracking.Tracker, None: nothing logged): each trial an MLflow run nested under the study's."""
    import torch

    from bench.training.train import resolve_recipe, train_model

    def objective(trial: optuna.Trial):
        ahead = [t for t in counted(trial.study, LIVE) if t.number < trial.number]
        if len(ahead) >= target:  # other workers already run the last trials: do not overshoot
            trial.set_user_attr("surplus", True)
            raise SurplusTrial
        if sampler_seed is not None:
            trial.set_user_attr("sampler_seed", sampler_seed)
        base, _ = resolve_recipe(model, recipe_name, base_overrides, select_metric)
        params = SPACES[space](trial, base)
        recipe, size = resolve_recipe(model, recipe_name, {**base_overrides, **params}, select_metric)
        trial.set_user_attr("budget", budget_of(recipe, size))  # --from-study retrains with it
        model_dir = trials_dir / f"trial-{trial.number:04d}"

        def on_epoch(epoch: int, row: dict):
            trial.set_user_attr("epochs_run", epoch)
            if len(metrics) == 1:
                trial.report(row[metrics[0]], epoch)
                # after the last epoch the trial is finished: pruning it then would only throw its result away
                if epoch < recipe.epochs and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}: {metrics[0]} {row[metrics[0]]:.4f}")

        with (track or NullTracker()).model_run(f"{trial.study.study_name}/trial-{trial.number:04d}", model_dir,
                                                recipe, size, seed) as tracked:
            try:
                meta = train_model(model, ds, store, recipe, size, model_dir, seed, progress=progress,
                                   on_epoch=tracked.chain(on_epoch), force=True, persist=False,  # no weights/state
                                   extra_meta={"study": trial.study.study_name, "trial": trial.number})
            except NonFiniteLoss as e:  # a diverging recipe is a result, not a crash: the trial fails, the study goes on
                trial.set_user_attr("error", f"non-finite loss: {e}")
                raise
            finally:
                gc.collect()
                if torch.cuda.is_available():
                    trial.set_user_attr("cuda_mem_allocated_mb", round(torch.cuda.memory_allocated() / 2**20, 1))
                    torch.cuda.empty_cache()
            tracked.finish(meta)
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
