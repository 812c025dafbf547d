"""Optuna search spaces and study storage.

A search space is a small define-by-run function: it asks the trial for values and returns recipe overrides.
The storage URL is the only thing that changes between a laptop and a cluster:
  default                  studies/fashion.db, an embedded SQLite file (several processes on one machine)
  postgresql://user@host/db  any SQLAlchemy URL: workers on many machines
  journal:PATH             an append-only journal file (no server; no heartbeats, so no killed-trial retry: a
                           killed worker's trial stays RUNNING and other workers stop waiting for it after
                           bench.tune's --wait-timeout)
SQL storages run a heartbeat: a trial whose worker stops beating for `grace` seconds is marked failed and re-queued
with the same parameters (up to 3 times), so it is never left RUNNING forever.
Each trial keeps its budget (epochs, size, batch_size, pretrained) in its user attribute `budget` (the study keeps its
first run's); best_params returns it with the tuned parameters, so a retrain trains the way the trial did.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from zoo.recipes import CHOICES

SCHEMES, TASK_WEIGHTINGS = CHOICES["loss"], CHOICES["task_weighting"]

# Anchored to this folder, not the working directory: a ./studies/ data folder created elsewhere would shadow
# this package on the next import.
STUDIES_DIR = Path(__file__).resolve().parent
DEFAULT_STORAGE = f"sqlite:///{STUDIES_DIR / 'fashion.db'}"


def default_space(trial: optuna.Trial, base_lr: float) -> dict:
    """Learning rate, regularisation and the class-imbalance treatment: where accuracy on this data is won."""
    params = {
        "lr": trial.suggest_float("lr", base_lr / 10, base_lr * 10, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-1, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.6),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
        "loss": trial.suggest_categorical("loss", list(SCHEMES)),
        "task_weighting": trial.suggest_categorical("task_weighting", list(TASK_WEIGHTINGS)),
    }
    if params["loss"] == "effective":
        params["loss_beta"] = trial.suggest_categorical("loss_beta", [0.9, 0.99, 0.999, 0.9999])
    if params["loss"] == "focal":
        params["focal_gamma"] = trial.suggest_float("focal_gamma", 0.5, 4.0)
    return params


SPACES = {"default": default_space}


def open_storage(url: str | None = None, heartbeat: int = 30, grace: int | None = None):
    """Storage from a URL; SQL storages get a heartbeat and retry of trials whose worker died."""
    url = url or DEFAULT_STORAGE
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    with warnings.catch_warnings():  # heartbeats are marked experimental in optuna; they are what we need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                          grace_period=grace or 4 * heartbeat,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))


def pick_best(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best trial; for a multi-objective study, the Pareto-front trial with the highest overall accuracy."""
    if len(study.directions) == 1:
        return study.best_trial
    return max(study.best_trials, key=lambda t: t.values[0])


def study_base(study_name: str, storage: str | None = None) -> tuple[str | None, str | None]:
    """(base recipe, model) a study tuned, None where it did not record them."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    return study.user_attrs.get("recipe"), study.user_attrs.get("model")


def best_params(study_name: str, storage: str | None = None) -> dict:
    """Recipe overrides from a study's best trial, its budget included (for `bench.run --from-study`)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    except KeyError as e:
        raise KeyError(f"no study {study_name!r} in {storage or DEFAULT_STORAGE}; run python -m bench.tune first") from e
    try:
        best = pick_best(study)
    except ValueError as e:
        raise ValueError(f"study {study_name!r} has no completed trial yet") from e
    # a learning rate tuned for 10 epochs is not the one for 30: the trial's budget goes with its parameters
    budget = best.user_attrs.get("budget") or study.user_attrs.get("budget") or {}
    print(f"[study {study_name}] best trial #{best.number} ({best.values}): {best.params}; trial budget {budget} "
          f"(flags given explicitly win)")
    return {**best.params, **budget}
