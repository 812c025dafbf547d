"""Experiment tracking in MLflow, off unless asked: `--track [URI]` on bench.run, bench.tune and bench.ensemble.

    pip install -e '.[mlflow]'
    mlflow server --backend-store-uri sqlite:///mlflow.db --port 5000 &
    python -m bench.run --models resnet18 --track http://127.0.0.1:5000
    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 python -m bench.tune --model resnet18 --trials 8 --track

Nothing is logged without --track (not even when $MLFLOW_TRACKING_URI is set: a bare --track uses it). A folder
(a path without a scheme, or file://PATH) means the SQLite store FOLDER/mlflow.db with artifacts in FOLDER/artifacts,
the folder made at the first MLflow call (MLflow 3 refuses its old file store, which a folder used to mean). Runs go
to the experiment --track-experiment (default $MLFLOW_EXPERIMENT_NAME, else `fashion-bench`). What is logged:
- a model (train_model): one MLflow run named RUN/MODEL. Params: model, size, seed, every recipe field (`recipe` is
  the preset's name), timm_name, init, device, dataset (fingerprint), run_dir, and study/trial/from_study where set.
  Metrics: every numeric column of the trainer's history rows per epoch (step = epoch; overall_acc, class_avg_acc,
  val_loss, train_loss, lr, ...), logged as each epoch ends; at the end the final scores val_overall_acc,
  val_class_avg_acc, val_mean_class_acc, val_macro_f1, val_acc.<attribute> (run.json's `val`: the selected epoch
  on val), the same as val_tta_* (flip TTA), best_epoch, train_time_s. Artifacts: run.json, history.csv, curves.png.
- k-fold (--folds K): one run for the member (its val_* are the out-of-fold scores over train + val; params
  folds, fold_seed, signature; artifacts run.json, folds.json) with its K fold models as nested runs, logged from
  their artifacts when the member finishes (history.csv gives their per-epoch metrics; they are not streamed live).
- refit (--refit): the refit training is a nested run of the val run, which also gets refit_epochs,
  refit_train_time_s and the updated run.json.
- a study (bench.tune): one parent run per study and storage, found again by a resumed command and by the other
  workers; each trial is a nested run logged as a model (its tuned values are the recipe params). A pruned trial
  ends KILLED, its reason in the tag fashion_bench.stopped; the parent gets the study's settings, best value(s),
  trial counts and tune-<study>.md when the command ends.
- an ensemble: one run named _ensembles/NAME: its options as params; its weights (weight.<member>, per attribute
  weight.<member>.<attribute>) and the decision rule's fitted parameters (tau.<attribute>) as metrics, equal to the
  entry's run.json; the scores val_* (what the leaderboard shows: out-of-fold when CV ran), val_in_sample_*,
  val_uniform_*, val_plain_view_*; artifact run.json.
A model that the command skips because it finished before is logged from its artifacts, unless the experiment holds
it already (tag fashion_bench.key: its folder and finish time), so re-running a command does not log it twice.

A tracking failure (server down, bad URI, a rejected request) prints one warning and turns tracking off for the rest
of the command: training never stops for it and waits at most one short request (HTTP timeout 10 s, 1 retry, unless
$MLFLOW_HTTP_REQUEST_TIMEOUT / $MLFLOW_HTTP_REQUEST_MAX_RETRIES say otherwise). mlflow is imported only with
--track. Another command adds tracking with `add_tracking_arguments(parser)`, `track = tracker_from_args(args)` and

    with track.model_run(label, model_dir, recipe, size, seed) as run:
        meta = train_model(..., on_epoch=run.chain(on_epoch))
        run.finish(meta)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

from bench.artifacts import ArtifactError, inside

ENV_URI, ENV_EXPERIMENT = "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "fashion-bench"
# short HTTP requests: a dead server costs one quick failure, not mlflow's default minutes of retries
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5"}
KEY_TAG = "fashion_bench.key"
SCORES = ("overall_acc", "class_avg_acc", "mean_class_acc", "macro_f1")
RUN_FILES = ("run.json", "history.csv", "curves.png", "folds.json")
PARAM_MAX = 6000  # MLflow's limit on a param value


def add_tracking_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--track", nargs="?", const="", metavar="URI",
                   help="log to MLflow (pip install -e '.[mlflow]'): the recipe as params, per-epoch metrics, final "
                        "scores and artifacts (bench/tracking.py says what each command logs). URI: an MLflow "
                        f"server (http://host:5000), sqlite:///FILE, or a FOLDER (its SQLite store FOLDER/mlflow.db, "
                        f"artifacts in FOLDER/artifacts; made when needed); --track alone uses ${ENV_URI}. "
                        f"Without --track nothing is logged, even when ${ENV_URI} is set. A tracking failure warns "
                        "once and training goes on untracked")
    p.add_argument("--track-experiment", metavar="NAME",
                   help=f"MLflow experiment (default ${ENV_EXPERIMENT}, else {DEFAULT_EXPERIMENT})")


def tracker_from_args(a: argparse.Namespace) -> "Tracker | NullTracker":
    """The tracker that --track asks for (NullTracker without it). Exits 2 when --track has no URI and
    $MLFLOW_TRACKING_URI is unset, or when mlflow is not installed. Sets a.track to the URI used (children of
    --devices / --workers get it)."""
    if getattr(a, "track", None) is None:
        return NullTracker()
    uri = a.track or os.environ.get(ENV_URI, "")
    if not uri:
        print(f"error: --track without a URI uses ${ENV_URI}, which is not set; give one, e.g. --track "
              f"http://127.0.0.1:5000 or --track sqlite:///mlflow.db", file=sys.stderr)
        raise SystemExit(2)
    try:
        import mlflow  # noqa: F401
    except ImportError:
        print("error: --track needs MLflow: pip install -e '.[mlflow]' (or pip install mlflow)", file=sys.stderr)
        raise SystemExit(2)
    store, _, folder = resolve_track_uri(uri)
    if folder is not None and folder.exists() and not folder.is_dir():
        print(f"error: --track {uri}: {folder} is a file; give a folder (its store is FOLDER/mlflow.db) or an SQLite "
              f"file as sqlite:///{folder}", file=sys.stderr)
        raise SystemExit(2)
    a.track = uri
    experiment = a.track_experiment or os.environ.get(ENV_EXPERIMENT) or DEFAULT_EXPERIMENT
    where = f"{store} (artifacts in {folder / 'artifacts'})" if folder is not None else uri
    print(f"[track] logging to MLflow at {where}, experiment {experiment}")
    return Tracker(uri, experiment)


def resolve_track_uri(uri: str) -> tuple[str, str | None, Path | None]:
    """(tracking URI given to MLflow, artifact location of experiments this command creates (None: the store's
    default), the folder when `uri` names one). A folder, a path without a scheme or file://PATH, is the SQLite
    store FOLDER/mlflow.db with artifacts in FOLDER/artifacts; any other URI (http://, sqlite:///FILE, databricks)
    goes to MLflow as it is."""
    if uri.startswith("file:"):
        folder = Path(unquote(urlparse(uri).path))
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri) or uri in ("databricks", "databricks-uc"):
        return uri, None, None
    else:
        folder = Path(uri).expanduser()
    folder = folder.resolve()
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri(), folder


def mlflow_available() -> bool:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return False
    return True


def metric_key(text: str) -> str:
    """A name MLflow accepts as a metric or param key (letters, digits, _ - . space /)."""
    return re.sub(r"[^\w\-. /]", "_", str(text))


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def score_metrics(prefix: str, s: dict | None) -> dict[str, float]:
    """A bench.metrics.score dict as metrics: PREFIX_overall_acc, ..., PREFIX_acc.<attribute>."""
    if not s:
        return {}
    out = {f"{prefix}_{k}": _number(s.get(k)) for k in SCORES}
    out.update({metric_key(f"{prefix}_acc.{attr}"): _number(v) for attr, v in (s.get("attr_acc") or {}).items()})
    return {k: v for k, v in out.items() if v is not None}


def history_rows(model_dir: Path) -> list[dict]:
    """history.csv's rows as dicts (none when it does not exist)."""
    path = Path(model_dir) / "history.csv"
    if not path.exists():
        return []
    import pandas as pd
    return pd.read_csv(path).to_dict("records")


def run_key(meta: dict, model_dir: Path) -> str:
    """What identifies one finished training of a folder: its path and finish time (a k-fold member: its folds'),
    hashed into a tag value that MLflow's search can match."""
    model_dir = Path(model_dir).resolve()
    if "kfold" in meta:
        stamps = []
        for fold in meta["kfold"].get("folds", []):
            try:
                fold_dir = inside(model_dir, fold, "kfold.folds", model_dir / "run.json")
                stamps.append(json.loads((fold_dir / "run.json").read_text()).get("finished"))
            except (ArtifactError, OSError, ValueError):
                stamps.append(None)
        what = f"{model_dir}|{meta['kfold'].get('signature')}|{stamps}"
    else:
        what = f"{model_dir}|{meta.get('finished')}"
    return hashlib.sha1(what.encode()).hexdigest()[:24]


def run_label(model_dir: Path, parts: int = 2) -> str:
    return "/".join(Path(model_dir).parts[-parts:])


class _State:
    """What the trackers of one command share: the client, the experiment, whether tracking failed, and the run of
    each model folder logged so far."""

    def __init__(self):
        self.client, self.experiment_id, self.failed, self.runs = None, None, False, {}


class NullTracker:
    """No --track: every call does nothing."""

    def __bool__(self):
        return False

    def model_run(self, *args, **kwargs) -> "NullRun":
        return NullRun()

    def under(self, parent) -> "NullTracker":
        return self

    def under_dir(self, model_dir) -> "NullTracker":
        return self

    def study_run(self, *args, **kwargs) -> "NullRun":
        return NullRun()

    def log_refit(self, *args, **kwargs) -> None:
        pass

    def log_ensemble(self, *args, **kwargs) -> None:
        pass


class NullRun:
    id = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def chain(self, on_epoch=None):
        return on_epoch

    def on_epoch(self, epoch, row):
        pass

    def finish(self, *args, **kwargs):
        pass

    def children(self) -> NullTracker:
        return NullTracker()

    def finish_study(self, *args, **kwargs):
        pass


class Tracker:
    """Logs to one MLflow tracking URI and experiment; `parent` (a run id, or a function returning one when first
    needed) nests the runs it creates. Every MLflow call goes through `_call`: the first failure warns once and turns
    tracking off for the whole command."""

    def __init__(self, uri: str, experiment: str = DEFAULT_EXPERIMENT, parent=None, state: _State | None = None):
        self.given, self.experiment, self.parent = uri, experiment, parent
        self.uri, self.artifact_location, self.folder = resolve_track_uri(uri)
        self._s = state or _State()
        for k, v in HTTP_DEFAULTS.items():
            os.environ.setdefault(k, v)

    def __bool__(self):
        return True

    @property
    def failed(self) -> bool:
        return self._s.failed

    def under(self, parent) -> "Tracker":
        """The same tracker, its runs nested under `parent` (a run id or a function returning one)."""
        return Tracker(self.given, self.experiment, parent, self._s)

    def under_dir(self, model_dir) -> "Tracker":
        """Nested under the run that logged `model_dir` in this command (top level if none did)."""
        key = str(Path(model_dir).resolve())
        return self.under(lambda: self._s.runs.get(key))

    # --- MLflow calls, each guarded ------------------------------------------------------------------------------
    def _call(self, what: str, fn, *args, **kwargs):
        if self._s.failed:
            return None
        try:
            with warnings.catch_warnings():  # MLflow's SQL store uses SQLAlchemy APIs that 2.1 deprecates
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mlflow\.")
                if self._s.client is None:
                    from mlflow.tracking import MlflowClient
                    if self.folder is not None:
                        self.folder.mkdir(parents=True, exist_ok=True)
                    client = MlflowClient(tracking_uri=self.uri)
                    exp = client.get_experiment_by_name(self.experiment)
                    self._s.experiment_id = exp.experiment_id if exp else client.create_experiment(
                        self.experiment, artifact_location=self.artifact_location)
                    self._s.client = client
                return fn(self._s.client, *args, **kwargs)
        except Exception as e:  # any failure of tracking: never of training
            self._s.failed = True
            message = " ".join(str(e).split())
            print(f"warning: MLflow tracking to {self.uri} failed ({what}: {type(e).__name__}: {message[:300]}); "
                  f"training goes on, nothing more is logged to MLflow by this command", file=sys.stderr)
            return None

    def _parent_id(self) -> str | None:
        return self.parent() if callable(self.parent) else self.parent

    def create_run(self, name: str, tags: dict | None = None) -> str | None:
        tags = {k: str(v) for k, v in (tags or {}).items()}
        parent = self._parent_id()
        if parent:
            tags["mlflow.parentRunId"] = parent

        def create(c):
            return c.create_run(self._s.experiment_id, run_name=name, tags=tags).info.run_id
        return self._call(f"creating run {name}", create)

    def find_run(self, key: str) -> str | None:
        def find(c):
            runs = c.search_runs([self._s.experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'",
                                 max_results=1)
            return runs[0].info.run_id if runs else None
        return self._call("searching runs", find)

    def log(self, run_id: str | None, metrics: dict | None = None, params: dict | None = None, step: int = 0,
            tags: dict | None = None) -> None:
        if run_id is None:
            return
        import time

        from mlflow.entities import Metric, Param, RunTag
        now = int(time.time() * 1000)
        ms = [Metric(metric_key(k), v, now, int(step)) for k, v in (metrics or {}).items()
              if _number(v) is not None]
        ps = [Param(metric_key(k), str(v)[:PARAM_MAX]) for k, v in (params or {}).items() if v is not None]
        ts = [RunTag(k, str(v)[:PARAM_MAX]) for k, v in (tags or {}).items()]
        for i in range(max(-(-len(ms) // 1000), -(-len(ps) // 100), 1)):  # MLflow's limits per batch
            self._call("logging", lambda c: c.log_batch(run_id, metrics=ms[i * 1000:(i + 1) * 1000],
                                                         params=ps[i * 100:(i + 1) * 100], tags=ts if i == 0 else []))

    def artifacts(self, run_id: str | None, folder: Path, names=RUN_FILES, under: str | None = None) -> None:
        """Upload the run folder's own files `names`. A link (the folder, or a file in it) is never followed: a run
        folder from elsewhere could link `curves.png` to a private key, which would land on the tracking server."""
        if run_id is None:
            return
        folder = Path(folder)
        links = [p for p in (folder, *(folder / n for n in names)) if p.is_symlink()]
        for path in links:
            print(f"warning: [track] {path} is a link; not uploaded (a run folder's files are its own)",
                  file=sys.stderr)
        if folder.is_symlink():
            return
        for name in names:
            path = folder / name
            if path.is_file() and not path.is_symlink():
                self._call(f"uploading {name}", lambda c: c.log_artifact(run_id, str(path), under))

    def end(self, run_id: str | None, status: str = "FINISHED") -> None:
        if run_id is not None:
            self._call("ending run", lambda c: c.set_terminated(run_id, status))

    # --- what the commands log -------------------------------------------------------------------------------------
    def model_run(self, label: str, model_dir: Path, recipe=None, size: int | None = None,
                  seed: int | None = None, params: dict | None = None) -> "ModelRun":
        """A context for training one model into `model_dir`: `run.chain(on_epoch)` logs each epoch, and
        `run.finish(meta)` the final scores and artifacts; an exception ends the run FAILED (KILLED on Ctrl-C or a
        pruned trial). The MLflow run is created at the first epoch (or by finish), so a command that stops before
        training logs nothing."""
        base = {"run_dir": str(Path(model_dir).resolve())}  # the model's name comes from run.json's config
        if recipe is not None:
            base.update({k: v for k, v in recipe.to_dict().items() if k != "name"})
            base["recipe"] = recipe.name
        base.update({k: v for k, v in (("size", size), ("seed", seed)) if v is not None})
        return ModelRun(self, label, Path(model_dir), {**base, **(params or {})})

    def study_run(self, study: str, storage: str, params: dict) -> "StudyRun":
        """The parent run of a study on a storage: found again (by tag) when it exists, else created."""
        key = hashlib.sha1(f"study|{storage}|{study}".encode()).hexdigest()[:24]
        run_id = self.find_run(key)
        if run_id is None:
            run_id = self.create_run(f"study {study}", {KEY_TAG: key, "fashion_bench.kind": "study"})
            self.log(run_id, params={"study": study, "storage": storage, **params})
        else:
            self._call("reopening the study run", lambda c: c.update_run(run_id, status="RUNNING"))
        return StudyRun(self, run_id)

    def log_refit(self, model_dir: Path, meta: dict) -> None:
        """After --refit: the val run gets the refit's epochs and time and the updated run.json; a refit that this
        command did not log live (bench.distill --refit) is logged from its artifacts as a nested run."""
        refit_dir = Path(model_dir) / "refit"
        refit_meta = _read_meta(refit_dir)
        if refit_meta is not None and str(refit_dir.resolve()) not in self._s.runs:
            label = f"{run_label(model_dir)}/refit"
            with self.under_dir(model_dir).model_run(label, refit_dir) as run:
                run.finish(refit_meta)
        run_id = self._s.runs.get(str(Path(model_dir).resolve()))
        refit = meta.get("refit") or {}
        self.log(run_id, {"refit_epochs": refit.get("epochs"), "refit_train_time_s": refit.get("train_time_s"),
                          "refit_train_images": refit.get("train_images")})
        self.artifacts(run_id, model_dir, ("run.json",))

    def log_ensemble(self, result: dict, entry_dir: Path, folds: int | None = None, seed: int | None = None) -> None:
        """One run for an ensemble entry: options, weights, decision parameters, scores, run.json."""
        run_id = self.create_run(f"_ensembles/{result['name']}", {"fashion_bench.kind": "ensemble"})
        if run_id is None:
            return
        params = {k: result.get(k) for k in ("combine", "weighting", "metric", "decision", "per_attribute",
                                             "val_scoring", "scored_on")}
        params.update({"members": ",".join(result["members"]), "views": ",".join(result["views"]),
                       "folds": folds, "seed": seed, "entry_dir": str(Path(entry_dir).resolve())})
        attrs = result.get("attributes") or [str(i) for i in range(len(result.get("num_classes", [])))]
        metrics = {}
        for member, w in zip(result["members"], result["weights"]):
            if isinstance(w, list):  # per attribute
                metrics.update({f"weight.{member}.{attr}": v for attr, v in zip(attrs, w)})
            else:
                metrics[f"weight.{member}"] = w
        for name, values in (result.get("decision_params") or {}).items():
            metrics.update({f"{name}.{attr}": v for attr, v in zip(attrs, values)})
        for key in ("val", "val_in_sample", "val_uniform", "val_plain_view", "val_cv_argmax", "demo_test"):
            metrics.update(score_metrics(key, result.get(key)))
        self.log(run_id, metrics, params)
        self.artifacts(run_id, entry_dir, ("run.json",))
        self.end(run_id)


class ModelRun:
    """One model's MLflow run (see Tracker.model_run)."""

    def __init__(self, tracker: Tracker, label: str, model_dir: Path, params: dict):
        self.t, self.label, self.dir, self.params = tracker, label, model_dir, params
        self.id, self.steps, self.done, self.logged = None, set(), False, set()

    def __enter__(self) -> "ModelRun":
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if self.id is not None and not self.done:
            stopped = kind is KeyboardInterrupt or (kind is not None and kind.__name__ == "TrialPruned")
            self.t.log(self.id, tags={"fashion_bench.stopped": f"{kind.__name__ if kind else ''}: {error}"})
            self.t.artifacts(self.id, self.dir)
            self.t.end(self.id, "KILLED" if stopped else "FAILED" if kind else "FINISHED")
            self.done = True
        return False

    def ensure(self, meta: dict | None = None) -> str | None:
        """The run id, creating the run (with its params) on first use."""
        if self.id is None and not self.t.failed:
            meta = meta or _read_meta(self.dir) or {}
            self.id = self.t.create_run(self.label, {"fashion_bench.kind": "kfold member" if "kfold" in meta
                                                     else "model"})
            self._params({**self.params, **meta_params(meta)})
            if self.id is not None:
                self.t._s.runs[str(self.dir.resolve())] = self.id
        return self.id

    def _params(self, params: dict) -> None:
        """Params not logged yet (MLflow refuses to change one)."""
        new = {k: v for k, v in params.items() if v is not None and k not in self.logged}
        if new:
            self.t.log(self.id, params=new)
            self.logged |= set(new)

    def on_epoch(self, epoch: int, row: dict) -> None:
        """The trainer's history row of `epoch`, as metrics at step `epoch`."""
        if self.ensure() is None:
            return
        self.t.log(self.id, {k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        self.steps.add(int(epoch))

    def chain(self, on_epoch=None):
        """An on_epoch callback that logs, then calls `on_epoch` (which may stop training, e.g. prune a trial)."""
        def both(epoch: int, row: dict) -> None:
            self.on_epoch(epoch, row)
            if on_epoch is not None:
                on_epoch(epoch, row)
        return both

    def children(self) -> Tracker:
        """A tracker whose runs nest under this one (created when the first child needs it)."""
        return self.t.under(lambda: self.ensure())

    def finish(self, meta: dict) -> None:
        """Final scores, any epochs not logged live (a resumed run's earlier ones), artifacts; FINISHED. A run this
        command did not train (finished before) is logged from its artifacts unless the experiment has it."""
        if self.done or self.t.failed:
            return
        key = run_key(meta, self.dir)
        if self.id is None:
            found = self.t.find_run(key)
            if found is not None:
                self.t._s.runs[str(self.dir.resolve())] = found
                print(f"[track] {self.label}: already logged to MLflow (run {found})")
                self.done = True
                return
            if self.ensure(meta) is None:
                return
            self.t.log(self.id, tags={"fashion_bench.logged_from": "its artifacts (not streamed live)"})
        for row in history_rows(self.dir):
            if int(row["epoch"]) not in self.steps:
                self.t.log(self.id, {k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        final = {**score_metrics("val", meta.get("val")), **score_metrics("val_tta", meta.get("val_tta"))}
        for k in ("best_epoch", "train_time_s", "img_per_s", "epochs_run"):
            final[k] = meta.get(k) if not isinstance(meta.get(k), list) else None
        self._params(meta_params(meta))
        self.t.log(self.id, final, tags={KEY_TAG: key})
        self.t.artifacts(self.id, self.dir)
        for fold in (meta.get("kfold") or {}).get("folds", []):  # the fold models, nested, from their artifacts
            try:  # a fold is a folder inside this run's (a run.json from elsewhere may name any path)
                fold_dir = inside(self.dir, fold, "kfold.folds", self.dir / "run.json")
            except ArtifactError as e:
                print(f"warning: [track] {e}; that fold is not logged", file=sys.stderr)
                continue
            fold_meta = _read_meta(fold_dir)
            if fold_meta is not None:
                inherited = {k: v for k, v in self.params.items() if k != "run_dir"}
                with self.children().model_run(f"{self.label}/{fold}", fold_dir, params=inherited) as run:
                    run.finish(fold_meta)
        self.t.end(self.id)
        self.done = True


class StudyRun:
    """A study's parent run: trials nest under it (children()); finish_study logs the outcome."""

    def __init__(self, tracker: Tracker, run_id: str | None):
        self.t, self.id = tracker, run_id

    def children(self) -> Tracker:
        return self.t.under(self.id)

    def finish_study(self, study, report: Path | None = None) -> None:
        if self.id is None:
            return
        import optuna
        states = [t.state for t in study.get_trials(deepcopy=False)]
        metrics = {f"trials_{s.name.lower()}": states.count(s) for s in optuna.trial.TrialState}
        if len(study.directions) == 1 and any(s == optuna.trial.TrialState.COMPLETE for s in states):
            metrics["best_value"], metrics["best_trial"] = study.best_value, study.best_trial.number
        elif len(study.directions) > 1:
            metrics["pareto_trials"] = len(study.best_trials)
        self.t.log(self.id, metrics)
        if report is not None and Path(report).is_file():
            self.t.artifacts(self.id, Path(report).parent, (Path(report).name,))
        self.t.end(self.id)


def _read_meta(model_dir: Path) -> dict | None:
    try:
        return json.loads((Path(model_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return None


def meta_params(meta: dict) -> dict:
    """A model's params from its run.json: its config (model, size, seed, recipe fields), backbone, init, device,
    dataset, and the study, trial, fold or k-fold settings it records."""
    config = meta.get("config") or {}
    recipe = config.get("recipe") or {}
    out = {k: v for k, v in recipe.items() if k != "name"}
    out.update({"recipe": recipe.get("name"), "model": config.get("model"), "size": config.get("size"),
                "seed": config.get("seed")})
    init = meta.get("init")
    out.update({"timm_name": config.get("timm_name"), "dataset": config.get("dataset"),
                "init": init.get("init") if isinstance(init, dict) else init,
                "device": meta.get("device"), "n_params": meta.get("params"), "gflops": meta.get("gflops")})
    out.update({k: meta.get(k) for k in ("study", "trial", "fold", "folds", "from_study")})
    distill = meta.get("distill") or config.get("distill")
    if isinstance(distill, dict):  # a distilled student (bench.distill): its teacher and KD settings
        out.update({f"distill.{k}": v for k, v in distill.items() if isinstance(v, (str, int, float, bool))})
    if "kfold" in meta:
        kf = meta["kfold"]
        out.update({"folds": kf.get("k"), "fold_seed": kf.get("seed"), "signature": kf.get("signature")})
    return {k: v for k, v in out.items() if v is not None}
