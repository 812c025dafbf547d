"""Fan-out over local devices (issue #13): `bench.run --devices` trains each model once across one process per
device and writes the leaderboard once, at the end; `bench.tune --workers/--devices` shares one study; a failed
child is named and makes the command fail; Ctrl-C reaches every child once and each saves its state. On the CPU
as `--devices cpu,cpu`. The parent runs in this process where it can (its children are real processes)."""
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from bench.fanout import check_devices, labels_for, to_argv
from bench.reporting.leaderboard import report_dir
from bench.run import build_parser, main as run_main
from bench.tune import main as tune_main
from bench.tuning.study import FINISHED, counted

TINY = ["--size", "32", "--epochs", "1", "--batch-size", "16", "--pretrained", "none", "--no-progress"]


def test_two_devices_train_each_model_once_and_write_one_leaderboard(tiny_root, tmp_path, capsys):
    out = tmp_path / "runs"
    results = run_main(["--models", "resnet18,resnet34", "--devices", "cpu,cpu", "--data", str(tiny_root),
                        "--out", str(out), *TINY])
    stdout = capsys.readouterr().out
    assert sorted(r["name"] for r in results) == ["resnet18", "resnet34"]
    assert stdout.count("[fan-out] cpu #") == 2  # one child per device
    for name in ("resnet18", "resnet34"):
        assert json.loads((out / "default" / name / "run.json").read_text())["status"] == "done"
        assert stdout.count(f"[{name}] done:") == 1, stdout  # trained by exactly one of the children
        assert not (out / "default" / name / ".claim").exists()
    board = report_dir(out) / "leaderboard.md"
    # built by the parent after both finished: a child's board would lack the other model
    assert "resnet18" in board.read_text() and "resnet34" in board.read_text()
    assert "[cpu #1] report:" not in stdout and "[cpu #2] report:" not in stdout


def test_a_failed_child_is_named_and_the_command_fails(tiny_root, tmp_path, capsys):
    out = tmp_path / "runs"
    for name in ("resnet18", "resnet34"):  # folders holding runs of another config: each child stops on one
        (out / "default" / name).mkdir(parents=True)
        (out / "default" / name / "run.json").write_text(json.dumps({"config": {"model": "other"}, "status": "done"}))
    with pytest.raises(SystemExit) as stop:
        run_main(["--models", "resnet18,resnet34", "--devices", "cpu,cpu", "--data", str(tiny_root),
                  "--out", str(out), *TINY])
    err = capsys.readouterr().err
    assert stop.value.code == 1
    for label in ("cpu #1", "cpu #2"):
        assert f"error: the process on {label} (pid " in err and "exited with code 1: error: " in err
    assert "holds a run with a different config" in err and "2 of 2 processes failed" in err
    assert not report_dir(out).exists()  # no leaderboard from a failed command


def test_tune_workers_share_the_study_and_finish_exactly_n(tiny_root, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'fan.db'}"
    study = tune_main(["--data", str(tiny_root), "--storage", storage, "--study", "fan", "--trials", "2",
                       "--workers", "2", "--devices", "cpu", "--pruner", "none", "--sampler-seed", "5",
                       "--trials-dir", str(tmp_path / "trials"), "--out", str(tmp_path / "reports"),
                       "--runs-dir", str(tmp_path / "runs"), *TINY])
    stdout = capsys.readouterr().out
    assert stdout.count("[fan-out] cpu #") == 2  # --workers 2 on one device: round-robin
    assert "--sampler-seed=5 " in stdout and "--sampler-seed=6 " in stdout  # else both would propose the same
    finished = counted(study, FINISHED)
    assert len(finished) == 2 and len({tuple(sorted(t.params.items())) for t in finished}) == 2
    assert {t.user_attrs["sampler_seed"] for t in finished} <= {5, 6}
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING))
    assert (tmp_path / "reports" / "tune-fan.md").exists()  # written once, by the parent
    assert "\n[tune] study fan: 2 finished trials" in stdout  # the parent's summary (children's are prefixed)
    assert stdout.count("report: ") == 1 + stdout.count("report: no runs")  # no child wrote a report


def test_ctrl_c_reaches_each_child_once_and_each_saves_its_state(tiny_root, tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "bench.run", "--models", "resnet18,resnet34", "--devices", "cpu,cpu",
           "--data", str(tiny_root), "--out", str(out), "--size", "32", "--epochs", "200", "--batch-size", "16",
           "--pretrained", "none", "--no-progress", "--checkpoint-every", "0"]
    parent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    states = [out / "default" / name / "last.pt" for name in ("resnet18", "resnet34")]
    deadline = time.time() + 180
    while not all(s.exists() for s in states) and parent.poll() is None and time.time() < deadline:
        time.sleep(0.2)  # both children have finished an epoch
    assert parent.poll() is None, parent.communicate()[0][-3000:]
    parent.send_signal(signal.SIGINT)  # what the terminal's Ctrl-C does: the children are in their own group
    output = parent.communicate(timeout=120)[0]
    assert parent.returncode == 130, output[-3000:]
    assert "sending SIGINT to cpu #1, cpu #2" in output and "run the same command again to resume" in output
    for label, name in (("cpu #1", "resnet18"), ("cpu #2", "resnet34")):  # each child stopped once, saving
        assert output.count(f"[{label}] interrupted: ") == 1 and f"[{label}] interrupted: {name}'s last" in output
    for name in ("resnet18", "resnet34"):
        meta = json.loads((out / "default" / name / "run.json").read_text())
        assert meta["status"] == "training" and not (out / "default" / name / ".claim").exists()
    assert not report_dir(out).exists()


def test_child_arguments_are_rebuilt_from_what_was_parsed():
    parser = build_parser()
    a = parser.parse_args(["--model", "a,b", "--lr=-1e-3", "--no-ema", "--force", "--devices", "cpu,cpu",
                           "--set", "lr_floor=0", "--set=crop_antialias=true"])
    argv = to_argv(parser, a, models="b,a", device="cpu", devices=None, skip_claimed=True)
    assert argv == ["--models=b,a", "--device=cpu", "--skip-claimed", "--force", "--lr=-0.001", "--no-ema",
                    "--set=lr_floor=0", "--set=crop_antialias=true"]
    back = parser.parse_args(argv)
    assert (back.models, back.lr, back.ema, back.devices, back.force) == ("b,a", -1e-3, False, None, True)
    assert back.set == ["lr_floor=0", "crop_antialias=true"]
    assert labels_for(["cuda:0", "cuda:1", "cuda:0"]) == ["cuda:0 #1", "cuda:1", "cuda:0 #2"]


def test_a_bad_entry_of_devices_is_named_as_part_of_devices(tiny_root, tmp_path, capsys):
    """`--devices cpu,cuda:99` said `--device cuda:99: ...`, naming a flag the user did not give."""
    def pick(name):  # the trainer's pick_device on a machine without that GPU
        if name != "cpu":
            raise ValueError(f"--device {name}: only 2 CUDA device(s) here; use --device cpu or auto")
    assert check_devices("cpu,cpu", "auto", pick) == ["cpu", "cpu"]
    assert check_devices(None, "cpu", pick) == ["cpu"]
    with pytest.raises(ValueError, match=r"^--device cuda:9: only 2 CUDA device\(s\) here; use --device cpu or auto$"):
        check_devices(None, "cuda:9", pick)  # the flag given was --device: the message stays
    with pytest.raises(ValueError, match=r"^--devices cpu,cuda:9 \(cuda:9\): only 2 CUDA device\(s\) here; use cpu or "
                                         r"auto$"):
        check_devices("cpu,cuda:9", "auto", pick)
    with pytest.raises(SystemExit) as e:
        tune_main(["--data", str(tiny_root), "--devices", "cpu,cuda:99", "--workdir", str(tmp_path / "w"), *TINY])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: --devices cpu,cuda:99 (cuda:99): ") and "--device " not in err
    assert not (tmp_path / "w").exists()
