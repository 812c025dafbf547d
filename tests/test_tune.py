import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from bench.plots import plt
from bench.run import main as run_main
from bench.training.trainer import NonFiniteLoss
from bench.tune import main as tune_main
from bench.tuning.study import FINISHED, StudyStopped, counted, run_study
from bench.tuning.report import integer_x, slanted_x, trials_frame, write_tune_report
from bench.tuning.storage import best_params, open_storage

TINY = ["--size", "32", "--batch-size", "16", "--pretrained", "none", "--no-progress", "--no-report"]


def args(root, storage, study, trials, epochs=3, *extra):
    return ["--data", str(root), "--storage", storage, "--study", study, "--trials", str(trials),
            "--epochs", str(epochs), "--trials-dir", str(os.path.dirname(storage.split("///")[-1])), *TINY, *extra]


def load(storage, study):
    return optuna.load_study(study_name=study, storage=storage)


def param_sets(study):
    return [tuple(sorted(t.params.items())) for t in study.trials if t.params]


def fake_training(monkeypatch, diverge=()):
    """bench.tune's train_model made instant (accuracy peaks at lr 1e-3); the calls numbered in `diverge` (from 1)
    raise NonFiniteLoss. Returns the list of calls."""
    calls = []

    def train(name, ds, store, recipe, size, model_dir, seed=0, progress=True, on_epoch=None, force=False,
              extra_meta=None, **_):
        calls.append({"trial": extra_meta["trial"], "seed": seed, "dir": model_dir})
        if len(calls) in diverge:
            raise NonFiniteLoss("loss became nan at epoch 1, step 1")
        acc = 1 / (1 + abs(math.log10(recipe.lr) + 3))
        for epoch in range(1, recipe.epochs + 1):
            on_epoch(epoch, {"overall_acc": acc * epoch / recipe.epochs, "class_avg_acc": acc * epoch / recipe.epochs / 2,
                             "mean_class_acc": acc * epoch / recipe.epochs})
        return {"train_time_s": 0.0, "val": {"overall_acc": acc, "class_avg_acc": acc / 2, "mean_class_acc": acc}}

    monkeypatch.setattr("bench.training.train.train_model", train)  # bench.tuning.study imports it per study
    return calls


def test_study_prunes_resumes_without_overshoot_and_feeds_run(tiny_root, tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = tune_main(args(tiny_root, storage, "a", 6, 3, "--sampler-seed", "0"))  # fixed: pruning must show
    states = [t.state for t in counted(study, FINISHED)]
    assert len(states) == 6
    assert optuna.trial.TrialState.PRUNED in states  # weak trials stopped early
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert all(t.user_attrs["epochs_run"] < 3 for t in pruned)
    md = write_tune_report(study, tmp_path / "rep").read_text()
    for section in ("## Best parameters", "## Parameter importances", "## Plots", "## Trials", "PRUNED"):
        assert section in md
    from PIL import Image
    # each plot is a PNG of its set size at 80 dpi: 8 x 4.5 in = 640 x 360 px, the parallel coordinates 11 x 5.5 in
    for plot, px in (("optimization-history", (640, 360)), ("parallel-coordinate", (880, 440)),
                     ("intermediate-values", (640, 360))):
        assert f"![{plot}](tune-a_files/{plot}.png)" in md
        with Image.open(tmp_path / "rep/tune-a_files" / f"{plot}.png") as im:
            assert (im.format, im.size) == ("PNG", px)
    tune_main(args(tiny_root, storage, "a", 6))  # same command again: nothing more to do
    assert len(load(storage, "a").trials) == 6
    tune_main(args(tiny_root, storage, "a", 7))  # --trials is the total
    study = load(storage, "a")
    assert len(counted(study, FINISHED)) == 7
    assert len(set(param_sets(study))) == 7  # the resumed run's sampler did not re-propose the first trial
    best = best_params("a", storage)
    budget = {"epochs": 3, "size": 32, "batch_size": 16, "pretrained": "none"}
    assert {k: best[k] for k in budget} == budget == study.user_attrs["budget"]
    out = tmp_path / "runs"
    # no --epochs/--size/--pretrained: the study's budget applies; --batch-size given: the flag wins
    run_main(["--models", "resnet18", "--data", str(tiny_root), "--out", str(out), "--batch-size", "8",
              "--from-study", "a", "--storage", storage, "--no-progress", "--no-report"])
    config = json.loads((out / "default/resnet18/run.json").read_text())["config"]
    recipe = config["recipe"]
    assert recipe["lr"] == pytest.approx(best["lr"]) and recipe["loss"] == best["loss"]
    assert (recipe["epochs"], config["size"], recipe["pretrained"], recipe["batch_size"]) == (3, 32, "none", 8)


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
        # a trial is RUNNING before its sampler has suggested every param; the budget attr comes after the last
        running = [t for t in running if "budget" in t.user_attrs]
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
    assert trials[killed.number].params == killed.params  # every param was suggested before the kill
    assert len(retry) == 1 and retry[0].params == killed.params and retry[0].state in FINISHED
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


def test_two_concurrent_workers_finish_exactly_n(tiny_root, tmp_path):
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    optuna.create_study(study_name="p", storage=storage, direction="maximize")  # avoid a creation race
    # the same training seed in both workers, as in real use: the samplers still must not propose the same trials
    workers = [spawn(args(tiny_root, storage, "p", 4, 2, "--seed", "0", "--pruner", "hyperband")) for _ in range(2)]
    for w in workers:
        assert w.wait(timeout=300) == 0, w.stderr.read().decode()[-2000:]
    study = load(storage, "p")
    assert len(counted(study, FINISHED)) == 4
    assert len(set(param_sets(study))) == len(param_sets(study))
    assert len({t.user_attrs["sampler_seed"] for t in study.trials if "sampler_seed" in t.user_attrs}) == 2
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING))


# study.ask() below stands in for another worker's trial; optuna warns that heartbeats are meant for Study.optimize
# (what run_study uses), which is true of the stand-in only
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize:UserWarning")
def test_worker_waits_for_trials_running_elsewhere(tmp_path):
    """With the last trial already running in another worker, a worker waits instead of overshooting."""
    storage = open_storage(f"sqlite:///{tmp_path / 'w.db'}", heartbeat=1)
    study = optuna.create_study(study_name="w", storage=storage, direction="maximize")
    elsewhere = study.ask()  # "another worker" holds the only requested trial
    threading.Timer(1.5, lambda: study.tell(elsewhere, 0.5)).start()
    started = []
    # timeout far below the 1.5 s: storages with heartbeats wait on (the heartbeat check handles dead workers)
    run_study(study, lambda t: started.append(t.number) or 0.0, target=1, poll=0.2, log=lambda *_: None, timeout=0.3)
    assert started == [] and len(study.trials) == 1
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE


def test_journal_worker_stops_waiting_for_a_stuck_trial(tmp_path):
    """Journal storage has no heartbeat: a dead worker's RUNNING trial must not keep the others waiting forever."""
    study = optuna.create_study(study_name="j", storage=open_storage(f"journal:{tmp_path / 'j.log'}"),
                                direction="maximize")
    study.ask()  # a worker that died holding the only requested trial
    started = []
    with pytest.raises(StudyStopped, match=r"trial\(s\) #0 .*no heartbeat.*sqlite:///"):
        run_study(study, lambda t: started.append(t.number) or 0.0, target=1, poll=0.01, log=lambda *_: None,
                  timeout=0.2)
    assert started == [] and study.trials[0].state == TrialState.RUNNING


def test_resumes_propose_new_parameters_with_the_same_training_seed(tiny_root, tmp_path, monkeypatch, capsys):
    calls = fake_training(monkeypatch)
    storage = f"sqlite:///{tmp_path / 'r.db'}"
    for n in (3, 6, 9):
        tune_main(args(tiny_root, storage, "r", n, 2, "--seed", "7"))
    assert len(set(param_sets(load(storage, "r")))) == 9
    tune_main(args(tiny_root, storage, "r", 10, 2, "--seed", "7", "--sampler-seed", "5"))
    study = load(storage, "r")
    assert len(study.trials) == 10 and len(set(param_sets(study))) == 10
    seeds = [t.user_attrs["sampler_seed"] for t in study.trials]
    assert len(set(seeds[:9])) == 3 and seeds[9] == 5  # one fresh sampler seed per run, unless given
    out = capsys.readouterr().out
    assert all(f"sampler seed {s}, training seed 7" in out for s in set(seeds))
    assert [c["seed"] for c in calls] == [7] * 10  # trials compare recipes, not seeds


def test_diverging_trial_fails_and_the_study_goes_on(tiny_root, tmp_path, monkeypatch):
    calls = fake_training(monkeypatch, diverge={2})
    storage = f"sqlite:///{tmp_path / 'd.db'}"
    study = tune_main(args(tiny_root, storage, "d", 3, 2, "--pruner", "none"))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(counted(study, FINISHED)) == 3 and len(calls) == 4
    assert [t.number for t in failed] == [1] and "non-finite loss: loss became nan" in failed[0].user_attrs["error"]
    assert trials_frame(study)["error"][1] == failed[0].user_attrs["error"]


def test_worker_stops_when_every_trial_diverges(tiny_root, tmp_path, monkeypatch, capsys):
    calls = fake_training(monkeypatch, diverge=range(1, 100))
    storage = f"sqlite:///{tmp_path / 'x.db'}"
    with pytest.raises(SystemExit) as stop:
        tune_main(args(tiny_root, storage, "x", 2, 2))
    assert stop.value.code == 1 and len(calls) == 2
    assert "2 trials of this worker failed (#0, #1)" in capsys.readouterr().err
    assert [t.state for t in load(storage, "x").trials] == [TrialState.FAIL] * 2


def test_resuming_on_another_dataset_warns(tiny_root, tiny_copy, tmp_path, monkeypatch, capsys):
    fake_training(monkeypatch)
    storage = f"sqlite:///{tmp_path / 'f.db'}"
    tune_main(args(tiny_root, storage, "f", 1, 1))
    tune_main(args(tiny_root, storage, "f", 2, 1))
    assert "another dataset" not in capsys.readouterr().err
    attr = tiny_copy / "split/train_attr.txt"
    lines = attr.read_text().splitlines()
    first = lines[0].split()
    lines[0] = " ".join(["1" if first[0] != "1" else "0", *first[1:]])  # one label changed
    attr.write_text("\n".join(lines) + "\n")
    tune_main(args(tiny_copy, storage, "f", 3, 1))
    assert "warning: study f was started on another dataset" in capsys.readouterr().err


def test_trials_table_keeps_digits_and_hides_heartbeat_waits():
    study = optuna.create_study(direction="maximize")
    dist = {"loss_beta": CategoricalDistribution([0.9, 0.99, 0.999, 0.9999]),
            "lr": FloatDistribution(1e-5, 1.0, log=True)}
    for state, attrs in ((TrialState.COMPLETE, {}), (TrialState.FAIL, {}),
                         (TrialState.FAIL, {"error": "non-finite loss: nan"})):
        t = create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None, user_attrs=attrs,
                         params={"loss_beta": 0.9999, "lr": 1.23456e-3}, distributions=dist)
        t.datetime_start -= timedelta(hours=1)
        study.add_trial(t)
    df = trials_frame(study)
    assert list(df["loss_beta"]) == ["0.9999"] * 3 and df["lr"][0] == "0.00123456"
    # trial 1 was failed by a heartbeat check: its end is when that noticed, not when it stopped running
    assert list(df["seconds"]) == ["3600", "-", "3600"]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_history_and_parallel_plots_are_legible():
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True) + t.suggest_float("dropout", 0, 0.5),
                   n_trials=3)
    vis = optuna.visualization.matplotlib
    ax = vis.plot_optimization_history(study)
    integer_x(ax)
    ax.figure.canvas.draw()
    assert len(ax.get_xticks()) >= 2 and all(float(x).is_integer() for x in ax.get_xticks())
    ax = vis.plot_parallel_coordinate(study)
    slanted_x(ax)
    labels = [lb for lb in ax.get_xticklabels() if lb.get_text()]
    assert {"lr", "dropout"} <= {lb.get_text() for lb in labels} and all(lb.get_rotation() == 30 for lb in labels)
    plt.close("all")


def test_multi_objective_study_has_a_pareto_front(tiny_root, tmp_path):
    storage = f"sqlite:///{tmp_path / 'm.db'}"
    study = tune_main(args(tiny_root, storage, "m", 3, 2, "--metric", "both"))
    assert len(study.directions) == 2 and len(counted(study, FINISHED)) == 3
    assert all(len(t.values) == 2 for t in study.best_trials)
    md = write_tune_report(study, tmp_path / "rep").read_text()
    assert "`overall_acc` and `class_avg_acc`" in md and "pareto-front.png" in md
    assert best_params("m", storage)  # --from-study picks the front's most accurate trial


def test_from_study_trains_on_the_base_recipe_it_tuned(tiny_root, tmp_path):
    """Tuned values sit on a base recipe; --from-study used to put them on the model's default recipe instead."""
    storage = f"sqlite:///{tmp_path / 'v.db'}"
    study = tune_main(args(tiny_root, storage, "v", 1, 1, "--recipe", "v0"))
    assert study.user_attrs["recipe"] == "v0"
    out = tmp_path / "runs"
    run_main(["--models", "resnet18", "--data", str(tiny_root), "--out", str(out), "--from-study", "v",
              "--storage", storage, "--no-progress", "--no-report"])
    recipe = json.loads((out / "default/resnet18/run.json").read_text())["config"]["recipe"]
    assert recipe["name"] == "v0" and recipe["optimizer"] == "adamw"  # not the default's scratch (nesterov)


def test_metric_class_tunes_the_class_average(tiny_root, tmp_path, monkeypatch):
    """--metric class: each trial's value is its val class-average accuracy (the 2024 challenge's metric), and a
    base recipe that picks its epoch by a score picks it by that metric."""
    calls = []
    fake_training(monkeypatch)
    import bench.training.train as train_lib
    fake = train_lib.train_model

    def spy(name, ds, store, recipe, *a, **k):
        calls.append(recipe.select)
        return fake(name, ds, store, recipe, *a, **k)

    monkeypatch.setattr("bench.training.train.train_model", spy)
    storage = f"sqlite:///{tmp_path / 'c.db'}"
    study = tune_main(args(tiny_root, storage, "c", 2, 1, "--metric", "class", "--recipe", "v0"))
    assert study.user_attrs["objective"] == ["class_avg_acc"] and calls == ["class_avg_acc"] * 2
    for t in study.trials:  # the fake's class average is half its overall accuracy, 1 / (1 + |log10 lr + 3|) / 2
        assert t.value == pytest.approx(1 / (1 + abs(math.log10(t.params["lr"]) + 3)) / 2)


def tree(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("storage, message", [
    ("postgresql://nouser@127.0.0.1:1/x", "error: study storage postgresql://nouser@127.0.0.1:1/x: cannot be opened "
                                          "(connection to server at \"127.0.0.1\", port 1 failed: Connection refused"),
    ("foo://bar", "error: study storage foo://bar: unknown kind 'foo'; use sqlite:///PATH, postgresql://USER@HOST/DB "
                  "(or another SQLAlchemy URL) or journal:PATH\n"),
    ("sqlite:///{tmp}/no/dir/x.db", "error: study storage sqlite:///{tmp}/no/dir/x.db: the folder {tmp}/no/dir does "
                                    "not exist; create it first (mkdir -p {tmp}/no/dir) or give a path in the working "
                                    "folder {tmp}/w\n"),
    ("journal:{tmp}/no/j.log", "error: study storage journal:{tmp}/no/j.log: the folder {tmp}/no does not exist"),
    ("sqlite:///{tmp}",
     "error: study storage sqlite:///{tmp}: {tmp} is a folder; name a file, e.g. {tmp}/fashion.db\n"),
    ("sqlite:////proc/x.db", "error: study storage sqlite:////proc/x.db: cannot be opened (unable to open database "
                             "file)\n"),
    *((url, f"error: study storage {url}: an in-memory SQLite database ends with this process, and a study must "
            f"outlive it (to be resumed, shared by workers, read by --from-study); name a file, e.g. "
            f"sqlite:///{{tmp}}/w/studies/fashion.db (the default without --storage)\n")
      for url in ("sqlite:///:memory:", "sqlite:///", "sqlite://", "sqlite:///file::memory:?cache=shared")),
])
def test_a_bad_storage_is_one_message_and_exit_2_making_no_folders(storage, message, tiny_root, tmp_path,
                                                                    monkeypatch, capsys):
    """A storage that cannot be opened gave a traceback (server down, unknown scheme, unwritable file), and a
    sqlite path outside the working folder had its missing folders made silently; an in-memory SQLite database ran
    the study with heartbeat-thread tracebacks, exit 0, and lost it at exit."""
    fake_training(monkeypatch)
    storage, message = storage.format(tmp=tmp_path), message.format(tmp=tmp_path)
    with pytest.raises(SystemExit) as e:
        tune_main(["--workdir", str(tmp_path / "w"), "--data", str(tiny_root), "--storage", storage, "--trials", "1",
                   "--epochs", "1", *TINY])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1  # one line, no traceback
    assert tree(tmp_path) == []


def test_storage_folders_are_made_inside_the_working_folder_only(tiny_root, tmp_path, monkeypatch, capsys):
    fake_training(monkeypatch)
    home = tmp_path / "w"
    tune_main(["--workdir", str(home), "--data", str(tiny_root), "--storage", f"sqlite:///{home / 'db/s.db'}",
               "--study", "s", "--trials", "1", "--epochs", "1", *TINY])
    assert (home / "db/s.db").exists()
    with pytest.raises(SystemExit) as e:  # reading a study (--from-study) makes nothing, wherever it looks
        run_main(["--models", "resnet18", "--data", str(tiny_root), "--workdir", str(home), "--from-study", "s",
                  "--storage", f"sqlite:///{home / 'elsewhere/s.db'}"])
    assert e.value.code == 2
    assert capsys.readouterr().err == (f"error: no study storage at sqlite:///{home / 'elsewhere/s.db'} "
                                       f"({home / 'elsewhere/s.db'} does not exist); run python -m bench.tune first "
                                       f"(or pass the study's --storage / --workdir)\n")
    assert not (home / "elsewhere").exists()


@pytest.mark.parametrize("trials", ["0", "-3"])
def test_no_trials_is_an_error_before_anything_is_made(trials, tiny_root, tmp_path, monkeypatch, capsys):
    """--trials 0 ran nothing, printed Optuna's warnings, wrote an empty report and exited 0."""
    calls = fake_training(monkeypatch)
    with pytest.raises(SystemExit) as e:
        tune_main(["--workdir", str(tmp_path / "w"), "--data", str(tiny_root), "--trials", trials, "--epochs", "1",
                   *TINY])
    assert e.value.code == 2 and calls == []
    assert capsys.readouterr().err == f"error: --trials {trials}: the study should hold at least 1 finished trial\n"
    assert tree(tmp_path) == []


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_a_trial_is_never_pruned_after_its_last_epoch(pruner, tiny_root, tmp_path, monkeypatch):
    """With 1 epoch per trial the median pruner (warm-up max(1, epochs // 5) = 1) pruned trials after their only
    epoch, throwing away finished results; the last epoch of any trial now completes it."""
    fake_training(monkeypatch)
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    study = tune_main(args(tiny_root, storage, "p", 8, 1, "--sampler-seed", "0", "--pruner", pruner))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 8
    assert all(t.value == t.intermediate_values[1] for t in study.trials)


def test_tune_report_says_why_a_plot_is_missing(tmp_path):
    """optuna draws empty axes when there is nothing to plot: the report says why instead of showing them, and
    draws what there is."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    empty = optuna.create_study(study_name="empty", direction="maximize")
    md = write_tune_report(empty, tmp_path / "rep").read_text()
    for plot in ("optimization-history", "parallel-coordinate", "intermediate-values"):
        assert f"_{plot}: no completed trial yet._" in md and f"![{plot}]" not in md
    assert not list((tmp_path / "rep/tune-empty_files").iterdir())
    flat = optuna.create_study(study_name="flat", direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    flat.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-1, log=True) + t.suggest_int("epochs", 1, 3), n_trials=3)
    md = write_tune_report(flat, tmp_path / "rep").read_text()  # completed trials, no per-epoch scores
    assert "_intermediate-values: no trial has reported a per-epoch score yet._" in md
    drawn = sorted(p.name for p in (tmp_path / "rep/tune-flat_files").iterdir())
    assert drawn == ["optimization-history.png", "parallel-coordinate.png"]
    assert "![optimization-history](tune-flat_files/optimization-history.png)" in md
