import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from bench.run import main as run_main
import threading

from bench.tune import FINISHED, counted, main as tune_main, run_study
from bench.tune_report import write_tune_report
from studies import best_params, open_storage

TINY = ["--size", "32", "--batch-size", "16", "--pretrained", "none", "--no-progress", "--no-report"]


def args(root, storage, study, trials, epochs=3, *extra):
    return ["--data", str(root), "--storage", storage, "--study", study, "--trials", str(trials),
            "--epochs", str(epochs), "--trials-dir", str(os.path.dirname(storage.split("///")[-1])), *TINY, *extra]


def load(storage, study):
    return optuna.load_study(study_name=study, storage=storage)


def test_study_prunes_resumes_without_overshoot_and_feeds_run(tiny_root, tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = tune_main(args(tiny_root, storage, "a", 6))
    states = [t.state for t in counted(study, FINISHED)]
    assert len(states) == 6
    assert optuna.trial.TrialState.PRUNED in states  # weak trials stopped early
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert all(t.user_attrs["epochs_run"] < 3 for t in pruned)
    md = write_tune_report(study, tmp_path / "rep").read_text()
    for section in ("## Best parameters", "## Parameter importances", "## Plots", "## Trials", "PRUNED"):
        assert section in md
    for plot in ("optimization-history", "parallel-coordinate", "intermediate-values"):
        assert (tmp_path / "rep/tune-a_files" / f"{plot}.png").stat().st_size > 1000
    tune_main(args(tiny_root, storage, "a", 6))  # same command again: nothing more to do
    assert len(load(storage, "a").trials) == 6
    tune_main(args(tiny_root, storage, "a", 7))  # --trials is the total
    assert len(counted(load(storage, "a"), FINISHED)) == 7
    best = best_params("a", storage)
    out = tmp_path / "runs"
    run_main(["--models", "resnet18", "--data", str(tiny_root), "--out", str(out), "--epochs", "1",
              "--from-study", "a", "--storage", storage, *TINY])
    recipe = json.loads((out / "default/resnet18/run.json").read_text())["config"]["recipe"]
    assert recipe["lr"] == pytest.approx(best["lr"]) and recipe["loss"] == best["loss"]


def spawn(cmd_args):
    return subprocess.Popen([sys.executable, "-m", "bench.tune", *cmd_args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_killed_worker_trial_is_retried(tiny_root, tmp_path):
    storage = f"sqlite:///{tmp_path / 'k.db'}"
    hb = ["--heartbeat", "1", "--grace", "2", "--pruner", "none"]
    worker = spawn(args(tiny_root, storage, "k", 2, 200, *hb))  # long trial, killed mid-way
    deadline = time.time() + 120
    running = []
    while time.time() < deadline and not running:
        time.sleep(0.5)
        try:
            running = load(storage, "k").get_trials(states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:
            pass
    assert running, worker.stderr.read().decode()[-2000:]
    time.sleep(1.5)  # let it train a little
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    killed = running[0]
    time.sleep(2.5)  # heartbeat now stale
    study = tune_main(args(tiny_root, storage, "k", 2, 2, *hb))
    trials = study.get_trials()
    assert len(counted(study, FINISHED)) == 2
    assert trials[killed.number].state == optuna.trial.TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retry) == 1 and retry[0].params == killed.params and retry[0].state in FINISHED
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


def test_two_concurrent_workers_finish_exactly_n(tiny_root, tmp_path):
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    optuna.create_study(study_name="p", storage=storage, direction="maximize")  # avoid a creation race
    workers = [spawn(args(tiny_root, storage, "p", 4, 2, "--seed", str(i), "--pruner", "hyperband")) for i in range(2)]
    for w in workers:
        assert w.wait(timeout=300) == 0, w.stderr.read().decode()[-2000:]
    study = load(storage, "p")
    assert len(counted(study, FINISHED)) == 4
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING))


def test_worker_waits_for_trials_running_elsewhere(tmp_path):
    """With the last trial already running in another worker, a worker waits instead of overshooting."""
    storage = open_storage(f"sqlite:///{tmp_path / 'w.db'}", heartbeat=1)
    study = optuna.create_study(study_name="w", storage=storage, direction="maximize")
    elsewhere = study.ask()  # "another worker" holds the only requested trial
    threading.Timer(1.5, lambda: study.tell(elsewhere, 0.5)).start()
    started = []
    run_study(study, lambda t: started.append(t.number) or 0.0, target=1, poll=0.2, log=lambda *_: None)
    assert started == [] and len(study.trials) == 1
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE


def test_multi_objective_study_has_a_pareto_front(tiny_root, tmp_path):
    storage = f"sqlite:///{tmp_path / 'm.db'}"
    study = tune_main(args(tiny_root, storage, "m", 3, 2, "--objective", "both"))
    assert len(study.directions) == 2 and len(counted(study, FINISHED)) == 3
    assert all(len(t.values) == 2 for t in study.best_trials)
    md = write_tune_report(study, tmp_path / "rep").read_text()
    assert "`overall_acc` and `mean_class_acc`" in md and "pareto-front.png" in md
    assert best_params("m", storage)  # --from-study picks the front's most accurate trial
