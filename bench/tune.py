"""Optuna study over the recipe: learning rate, regularisation, loss scheme; pruned, resumable, shareable.

    python -m bench.tune --model resnet18 --trials 50 [--metric overall|class|both] [--pruner median]
                         [--study NAME] [--storage URL] [--space NAME] [--data ROOT] [--epochs N]
                         [--sampler-seed N] [--workdir PATH]

`--trials N` means N finished (complete or pruned) trials in total: re-running continues the study and never
overshoots, and several workers started with the same --storage/--study share the work and finish exactly N.
Each trial reports validation accuracy every epoch, so weak trials are pruned early (single objective only).
A trial whose loss goes non-finite is recorded as failed (its reason in the trial's `error` attribute) and replaced;
a worker stops after --trials such failures. Every trial trains with the same --seed, so trials compare recipes,
not seeds; the sampler gets a fresh seed per worker and per resume (printed, and kept as the trial attribute
`sampler_seed`) so that workers and resumes propose new parameters; --sampler-seed fixes it.
Trial folders live under WORKDIR/studies/trials/<study>/ and keep run.json and history.csv (no weights); the
default storage is WORKDIR/studies/fashion.db. Writes WORKDIR/reports/tune-<study>.md; `python -m bench.run
--from-study NAME` trains with the best parameters and the study's trial budget (epochs, size, batch size, init),
flags given there still winning. The library is bench/tuning/, the search spaces bench/tuning/spaces.py.
"""
from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

import optuna

from bench import workdir
from bench.fanout import check_devices, follow_parent, run_children, to_argv
from bench.data import DatasetError, add_layout_arguments, layout_args, open_dataset, resolve_root
from bench.tuning.study import (FINISHED, OBJECTIVES, StudyStopped, budget_of, counted, make_objective, make_pruner,
                                run_study)
from bench.metrics import TARGET_HELP, TARGETS
from bench.tuning.spaces import SPACES
from bench.tracking import add_tracking_arguments, tracker_from_args
from bench.training.arguments import add_precision_argument


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--trials", type=int, default=50, help="finished trials the study should hold in total")
    p.add_argument("--metric", choices=["overall", "class", "both"],
                   help=TARGET_HELP + "; both: the Pareto front of the two (no pruning) (default overall)")
    p.add_argument("--objective", choices=list(OBJECTIVES),
                   help="older name of --metric; mean_class tunes balanced accuracy (not a challenge metric)")
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"])
    p.add_argument("--study", help="study name (default: <model>-<metric>)")
    p.add_argument("--storage", help="SQLAlchemy URL or journal:PATH (default: SQLite file WORKDIR/studies/fashion.db)")
    p.add_argument("--space", default="default", choices=SPACES.names(),
                   help="search space (bench/tuning/spaces.py): " + SPACES.describe())
    p.add_argument("--heartbeat", type=int, default=30, help="seconds between worker heartbeats (SQL storages)")
    p.add_argument("--grace", type=int, help="seconds without heartbeat before a trial counts as dead (default 4x)")
    p.add_argument("--wait-timeout", type=float, default=600,
                   help="storages without heartbeat (journal:): seconds to wait for other workers' stalled trials")
    p.add_argument("--data", help="dataset root (default $FASHION_DATA, else the demo set)")
    add_layout_arguments(p)
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
    add_precision_argument(p)
    p.add_argument("--workers", type=int,
                   help="worker processes on this machine sharing the study (default: one per --devices entry, else "
                        "1); with --sampler-seed S, worker i samples with seed S+i")
    p.add_argument("--devices", metavar="LIST",
                   help="e.g. cuda:0,cuda:1: the devices the --workers take in turn (cpu,cpu works too)")
    p.add_argument("--trials-dir", help="per-trial run.json/history.csv (default WORKDIR/studies/trials)")
    p.add_argument("--out", help="folder for tune-<study>.md (default WORKDIR/reports)")
    p.add_argument("--runs-dir", help="runs folder the leaderboard is rebuilt from (default WORKDIR/runs)")
    workdir.add_argument(p)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-report", action="store_true")
    add_tracking_arguments(p)
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def main(argv=None) -> optuna.Study:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.trials < 1:  # Optuna would run nothing and the report would be empty
        print(f"error: --trials {a.trials}: the study should hold at least 1 finished trial", file=sys.stderr)
        raise SystemExit(2)
    from bench.training.trainer import pick_device  # torch loads after the arguments are parsed (fast --help)
    from bench.training.train import ImageStore, demo_settings, resolve_recipe
    from bench.errors import StorageError
    from bench.tuning.storage import dashboard_command, default_url, open_storage, resolve_url, shown_url
    track = tracker_from_args(a)  # before any work: --track without a URI or without mlflow stops here
    wd = workdir.resolve(a.workdir)
    trials_root = Path(a.trials_dir) if a.trials_dir else wd.studies / "trials"
    reports, runs_dir = Path(a.out) if a.out else wd.reports, Path(a.runs_dir) if a.runs_dir else wd.runs
    if a.metric and a.objective and a.metric != a.objective:
        print(f"error: --metric {a.metric} and --objective {a.objective} disagree; give one", file=sys.stderr)
        raise SystemExit(2)
    target = a.metric or a.objective or "overall"
    metrics = OBJECTIVES[target]
    name = a.study or f"{a.model}-{target}"
    overrides = {"epochs": a.epochs, "size": a.size, "batch_size": a.batch_size, "pretrained": a.pretrained}
    try:
        root = resolve_root(a.data)
        ds = open_dataset(root, **layout_args(a))
        overrides = demo_settings(a.data, overrides, root)
        select_metric = target if target in ("overall", "class") else None  # which score picks a trial's epoch
        recipe, size = resolve_recipe(a.model, a.recipe, overrides, select_metric)
        given_url = a.storage or default_url(wd)
        url = resolve_url(given_url)
        if a.devices is not None and a.device != "auto":
            raise ValueError(f"--device {a.device} and --devices {a.devices}: give one of them")
        devices = check_devices(a.devices, a.device, pick_device)  # every device, before any work starts
        workers = len(devices) if a.workers is None else a.workers
        if workers < 1:
            raise ValueError(f"--workers {a.workers}: must be >= 1")
        devices = [devices[i % len(devices)] for i in range(workers)]  # round-robin
        device = pick_device(devices[0])
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(given_url, a.heartbeat, a.grace, home=wd)
    except (DatasetError, LookupError, ValueError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
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
    seeds = (f"sampler seed {sampler_seed}" if workers == 1 else "a fresh sampler seed per worker"
             if a.sampler_seed is None else f"sampler seeds {a.sampler_seed}..{a.sampler_seed + workers - 1}")
    print(f"[tune] study {name}: {seeds}, training seed {a.seed}, trial budget {budget}, space {a.space}")
    print(f"[tune] storage {shown_url(url)}; trials in {trials_root / name}; report in {reports}")
    print(f"[tune] watch it live (pip install optuna-dashboard): {dashboard_command(url)}")
    # one MLflow parent run per study and storage, found again by --workers children, other hosts and resumes
    tracked = track.study_run(name, shown_url(url), {"model": a.model, "metric": target, "space": a.space,
                                                     "pruner": a.pruner, "trials": a.trials, "recipe": recipe.name,
                                                     "seed": a.seed, **budget})
    if workers > 1:
        return fan_out(parser, a, study, devices, shown_url(url), reports, runs_dir, tracked)
    from bench.training.precision import setup
    print(setup(a.precision, device))  # the trials' precision (not in the config) and CPU threads
    store = ImageStore(ds, device, progress=not a.no_progress)
    objective = make_objective(a.model, ds, store, overrides, a.recipe, metrics, trials_root / name, a.trials, a.seed,
                               not a.no_progress, sampler_seed, a.space, select_metric, tracked.children())
    stopped = None
    try:
        run_study(study, objective, a.trials, timeout=a.wait_timeout)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished trials are stored in {url}; "
              f"the same command continues the study", file=sys.stderr)
        raise SystemExit(130)
    except StudyStopped as e:
        stopped = e
    finish(study, a.no_report, reports, runs_dir, leaderboard_metric(a), tracked)
    if stopped:
        print(f"error: {stopped}", file=sys.stderr)
        raise SystemExit(1)
    return study


def leaderboard_metric(a) -> str | None:
    """The leaderboard target this command names: its --metric (or --objective) when that is one of the
    leaderboard's metrics; None (`both`, `mean_class`, or not given) keeps the leaderboard's own."""
    named = a.metric or a.objective
    return named if named in TARGETS else None


def finish(study: optuna.Study, no_report: bool, reports: Path, runs_dir: Path, metric: str | None = None,
           tracked=None) -> None:
    """The study's summary line, its report and the leaderboard (once per command, also with --workers), whose
    target is `metric` (a leaderboard metric the command named; None keeps the report's own); `tracked` (the
    study's MLflow run, bench.tracking) gets the outcome and the report."""
    done = counted(study, FINISHED)
    failed = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("error")]
    print(f"[tune] study {study.study_name}: {len(done)} finished trials "
          f"({sum(t.state == optuna.trial.TrialState.PRUNED for t in done)} pruned, {len(failed)} failed)")
    if not no_report:
        from bench.reporting.leaderboard import refresh_report
        from bench.tuning.report import write_tune_report
        report = write_tune_report(study, reports)
        refresh_report(runs_dir, metric=metric)
    if tracked is not None:
        tracked.finish_study(study, None if no_report else report)


def fan_out(parser, a, study: optuna.Study, devices: list[str], url: str, reports: Path,
            runs_dir: Path, tracked=None) -> optuna.Study:
    """--workers N: N child `bench.tune` workers on `devices`, sharing the study this process created (so they do
    not race to create it); the report is written here, once, after all of them have finished."""
    args = [to_argv(parser, a, workers=None, devices=None, device=d, no_report=True, no_progress=True,
                    sampler_seed=None if a.sampler_seed is None else a.sampler_seed + i)  # else: fresh per worker
            for i, d in enumerate(devices)]
    done = run_children("bench.tune", devices, args)
    if done.interrupted:
        print(f"\ninterrupted: finished trials are stored in {url}; the same command continues the study",
              file=sys.stderr)
        raise SystemExit(130)
    finish(study, a.no_report, reports, runs_dir, leaderboard_metric(a), tracked)
    if done.failed:
        for child in done.failed:
            print(f"error: {child.describe()}", file=sys.stderr)
        raise SystemExit(1)
    return study


if __name__ == "__main__":
    follow_parent()  # a --workers child stops when its parent dies
    main()
