"""MLflow tracking (bench/tracking.py) against a real `mlflow server` that this module starts once on localhost
(free port, SQLite backend store, artifacts under a tmp folder): what bench.run, bench.tune and bench.ensemble log
with --track, nothing without it, and a dead server costing one warning and nothing else."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install -e '.[mlflow]'; "
                                              ".ci/run installs it)")
from mlflow.tracking import MlflowClient  # noqa: E402

from bench.ensemble import main as ensemble_main  # noqa: E402
from bench.run import main as run_main  # noqa: E402
from bench.tune import main as tune_main  # noqa: E402

TINY = ["--size", "32", "--batch-size", "16", "--pretrained", "none", "--no-progress", "--no-report"]
TIMING = ["train_s", "img_per_s", "epoch_s"]  # history columns that are wall-clock times


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real MLflow tracking server: SQLite backend store, artifacts proxied into a tmp folder."""
    d = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(d / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}",
                             "--artifacts-destination", str(d / "artifacts"), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    try:
        while True:
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server did not start: {(d / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and the workers it started
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def runs_of(uri, experiment):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client, ([] if exp is None else client.search_runs([exp.experiment_id]))


def metric_steps(client, run_id, key):
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def artifact_json(client, run_id, path, tmp_path):
    return json.loads((tmp_path / client.download_artifacts(run_id, path, str(tmp_path))).read_text())


def same_run(a, b):
    """Two run folders hold the same training: same files, history (timings aside), probabilities and scores."""
    assert sorted(f.name for f in a.iterdir()) == sorted(f.name for f in b.iterdir())
    pd.testing.assert_frame_equal(pd.read_csv(a / "history.csv").drop(columns=TIMING),
                                  pd.read_csv(b / "history.csv").drop(columns=TIMING))
    for split in ("val", "test"):
        with np.load(a / f"probs_{split}.npz") as x, np.load(b / f"probs_{split}.npz") as y:
            assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)
    ma, mb = (json.loads((d / "run.json").read_text()) for d in (a, b))
    assert ma["val"] == mb["val"] and ma["config"] == mb["config"]


def test_run_logs_recipe_epochs_scores_and_artifacts_once(server, tiny_root, demo_runs, tmp_path, capsys):
    out = tmp_path / "runs"
    cmd = ["--models", "resnet18", "--data", str(tiny_root), "--out", str(out), "--epochs", "2", *TINY,
           "--track", server, "--track-experiment", "run-test"]  # demo_runs' default/resnet18, tracked
    run_main(cmd)
    client, runs = runs_of(server, "run-test")
    assert [r.info.run_name for r in runs] == ["default/resnet18"]
    run, model_dir = runs[0], out / "default" / "resnet18"
    meta = json.loads((model_dir / "run.json").read_text())
    recipe = meta["config"]["recipe"]
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert (p["model"], p["size"], p["epochs"], p["batch_size"], p["recipe"], p["pretrained"]) == \
        ("resnet18", "32", "2", "16", recipe["name"], "none")
    assert {k: p[k] for k in recipe if k != "name" and recipe[k] is not None} == \
        {k: str(v) for k, v in recipe.items() if k != "name" and v is not None}  # every recipe field
    history = pd.read_csv(model_dir / "history.csv")
    for column in ("overall_acc", "class_avg_acc", "val_loss", "train_loss"):
        assert metric_steps(client, run.info.run_id, column) == dict(zip(history["epoch"], history[column]))
    m = run.data.metrics
    assert m["val_overall_acc"] == meta["val"]["overall_acc"]
    assert m["val_class_avg_acc"] == meta["val"]["class_avg_acc"]
    assert m["val_tta_class_avg_acc"] == meta["val_tta"]["class_avg_acc"]
    assert m["best_epoch"] == meta["best_epoch"] == 2
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"run.json", "history.csv", "curves.png"}
    assert artifact_json(client, run.info.run_id, "run.json", tmp_path / "dl") == meta
    same_run(model_dir, demo_runs / "default" / "resnet18")  # tracking changed nothing
    # the same command again skips the finished model: it is not logged twice
    capsys.readouterr()
    run_main(cmd)
    assert "already logged to MLflow" in capsys.readouterr().out
    assert len(runs_of(server, "run-test")[1]) == 1


def test_a_dead_server_warns_once_and_changes_nothing(tiny_root, demo_runs, tmp_path, capsys):
    run_main(["--models", "resnet18", "--data", str(tiny_root), "--out", str(tmp_path), "--epochs", "2", *TINY,
              "--track", f"http://127.0.0.1:{free_port()}"])  # nothing listens there
    err = capsys.readouterr().err
    assert err.count("warning: MLflow tracking") == 1 and "training goes on" in err, err
    same_run(tmp_path / "default" / "resnet18", demo_runs / "default" / "resnet18")
    from bench.tracking import Tracker
    started = time.monotonic()  # what the dead server cost: one quick failure, not mlflow's minutes of retries
    assert Tracker(f"http://127.0.0.1:{free_port()}").create_run("x") is None
    assert time.monotonic() - started < 30


def test_tune_trials_are_nested_runs_of_one_study_run(server, tiny_root, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    tune_main(["--data", str(tiny_root), "--storage", storage, "--study", "s", "--trials", "2", "--epochs", "1",
               "--trials-dir", str(tmp_path / "trials"), "--out", str(tmp_path / "reports"), *TINY,
               "--track", server, "--track-experiment", "tune-test"])
    client, runs = runs_of(server, "tune-test")
    parents = [r for r in runs if r.data.tags.get("fashion_bench.kind") == "study"]
    assert [r.info.run_name for r in parents] == ["study s"]
    parent = parents[0]
    trials = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                    key=lambda r: r.info.run_name)
    assert len(runs) == 3 and [r.info.run_name for r in trials] == ["s/trial-0000", "s/trial-0001"]
    assert parent.data.params["trials"] == "2" and parent.data.metrics["trials_complete"] == 2
    for r in trials:
        meta = json.loads((tmp_path / "trials" / "s" / r.info.run_name.split("/")[1] / "run.json").read_text())
        assert r.data.params["lr"] == str(meta["config"]["recipe"]["lr"])  # the sampled value
        assert r.data.params["trial"] == str(meta["trial"])
        assert r.data.metrics["val_overall_acc"] == meta["val"]["overall_acc"]
        assert list(metric_steps(client, r.info.run_id, "overall_acc")) == [1]


def test_ensemble_logs_its_weights_tau_and_scores_and_nothing_without_track(server, demo_runs, tmp_path,
                                                                            monkeypatch):
    runs = tmp_path / "runs"
    shutil.copytree(demo_runs, runs)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)  # set, but without --track nothing is logged
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "untracked")
    ensemble_main(["--runs-dir", str(runs), "--out", str(tmp_path / "plain"), "--no-report"])
    assert runs_of(server, "untracked")[1] == []
    ensemble_main(["--runs-dir", str(runs), "--out", str(tmp_path / "sub"), "--no-report", "--metric",
                            "class", "--weights", "fitted", "--track", server, "--track-experiment", "ens-test"])
    entry = json.loads((runs / "_ensembles" / "ensemble" / "run.json").read_text())
    client, found = runs_of(server, "ens-test")
    assert [r.info.run_name for r in found] == ["_ensembles/ensemble"]
    m, p = found[0].data.metrics, found[0].data.params
    assert {k: v for k, v in m.items() if k.startswith("weight.")} == \
        {f"weight.{name}": w for name, w in zip(entry["members"], entry["weights"])}
    assert len(entry["members"]) == 2 and len(entry["decision_params"]["tau"]) == len(entry["attributes"])
    assert {k: v for k, v in m.items() if k.startswith("tau.")} == \
        {f"tau.{a}": t for a, t in zip(entry["attributes"], entry["decision_params"]["tau"])}
    assert (p["decision"], p["weighting"], p["metric"]) == ("logit_adjusted", "fitted", "class")
    assert m["val_class_avg_acc"] == entry["val"]["class_avg_acc"]
    assert m["val_overall_acc"] == entry["val"]["overall_acc"]
    assert artifact_json(client, found[0].info.run_id, "run.json", tmp_path / "dl") == entry


def test_track_without_uri_or_without_mlflow_is_a_usage_error(monkeypatch, capsys, tmp_path):
    from bench.tracking import tracker_from_args
    parse = lambda *argv: __import__("bench.ensemble", fromlist=["x"]).parse_args(list(argv))  # noqa: E731
    assert not tracker_from_args(parse())  # no --track: the null tracker
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SystemExit) as e:
        tracker_from_args(parse("--track"))
    assert e.value.code == 2 and "MLFLOW_TRACKING_URI, which is not set" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'x.db'}")
    a = parse("--track")
    assert tracker_from_args(a).uri == a.track == f"sqlite:///{tmp_path / 'x.db'}"  # the env var, when asked
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(SystemExit) as e:
        tracker_from_args(parse("--track", "http://127.0.0.1:1"))
    assert e.value.code == 2 and "pip install -e '.[mlflow]'" in capsys.readouterr().err


def test_track_folder_is_an_sqlite_store_in_it(demo_runs, tmp_path, capsys):
    """--track FOLDER (offered by --help) warned and ran untracked with MLflow 3, which refuses its old file store:
    a folder now means the SQLite store FOLDER/mlflow.db, artifacts in FOLDER/artifacts, made at the first call."""
    runs = tmp_path / "runs"
    shutil.copytree(demo_runs, runs)
    folder = tmp_path / "tracking" / "here"
    ensemble_main(["--runs-dir", str(runs), "--out", str(tmp_path / "sub"), "--no-report", "--track", str(folder),
                   "--track-experiment", "folder-test"])
    captured = capsys.readouterr()
    assert "warning: MLflow tracking" not in captured.err, captured.err
    assert (f"[track] logging to MLflow at sqlite:///{folder / 'mlflow.db'} (artifacts in {folder / 'artifacts'}), "
            f"experiment folder-test") in captured.out
    client, found = runs_of(f"sqlite:///{folder / 'mlflow.db'}", "folder-test")
    entry = json.loads((runs / "_ensembles" / "ensemble" / "run.json").read_text())
    assert [r.info.run_name for r in found] == ["_ensembles/ensemble"]
    assert found[0].data.metrics["val_overall_acc"] == entry["val"]["overall_acc"]
    assert found[0].info.artifact_uri.startswith((folder / "artifacts").as_uri())
    assert artifact_json(client, found[0].info.run_id, "run.json", tmp_path / "dl") == entry
    assert list((folder / "artifacts").rglob("run.json"))  # the artifacts are in the folder, not ./mlruns
    (tmp_path / "afile").write_text("x")
    from bench.tracking import tracker_from_args
    with pytest.raises(SystemExit) as e:  # a file is no folder: refused before any work
        tracker_from_args(__import__("bench.ensemble", fromlist=["x"]).parse_args(["--track", str(tmp_path / "afile")]))
    assert e.value.code == 2 and f"{tmp_path / 'afile'} is a file" in capsys.readouterr().err


def test_a_linked_file_in_a_run_folder_is_not_uploaded(tiny_root, demo_runs, tmp_path, capsys):
    """A finished run folder from elsewhere whose curves.png is a link to the user's private file: `bench.run --track`
    logs the finished run from its files and uploaded the linked file's contents to the tracking server. Now the link
    is named in a warning and not uploaded; the run's own files still are."""
    runs = tmp_path / "runs"
    shutil.copytree(demo_runs, runs)
    secret = tmp_path / "id_ed25519"
    secret.write_text("PRIVATE KEY")
    model_dir = runs / "default" / "resnet18"
    (model_dir / "curves.png").unlink()
    (model_dir / "curves.png").symlink_to(secret)
    folder = tmp_path / "tracking"
    run_main(["--models", "resnet18", "--data", str(tiny_root), "--out", str(runs), "--epochs", "2", *TINY,
              "--track", str(folder), "--track-experiment", "links"])
    err = capsys.readouterr().err
    assert f"{model_dir / 'curves.png'} is a link; not uploaded" in err
    client, found = runs_of(f"sqlite:///{folder / 'mlflow.db'}", "links")
    assert [r.info.run_name for r in found] == ["default/resnet18"]
    assert {a.path for a in client.list_artifacts(found[0].info.run_id)} == {"run.json", "history.csv"}
    assert not [p for p in (folder / "artifacts").rglob("*") if p.is_file() and p.read_bytes() == b"PRIVATE KEY"]
