"""Command-line reliability: two real `bench.run` processes on one run folder (exactly one trains, the other stops
with a message naming it), and --help answered before torch loads."""
import os
import signal
import subprocess
import sys
import time

import pytest


def test_second_process_on_the_same_run_folder_is_refused(tiny_root, tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "bench.run", "--models", "resnet18", "--data", str(tiny_root), "--out", str(out),
           "--size", "32", "--epochs", "200", "--batch-size", "16", "--pretrained", "none", "--no-progress",
           "--no-report", "--checkpoint-every", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    claim, history = out / "default/resnet18/.claim", out / "default/resnet18/history.csv"
    deadline = time.time() + 120
    while not history.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)  # the first process holds the claim and has finished an epoch
    assert claim.exists() and first.poll() is None
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    first.send_signal(signal.SIGINT)  # Ctrl-C: the first one stops, keeping its last epoch
    first_out = first.communicate(timeout=120)[0]
    assert second.returncode == 1
    assert f"in use by pid {first.pid} on host" in second.stderr and "epoch" not in second.stdout
    assert first.returncode == 130 and "epoch   1/200" in first_out
    assert not claim.exists()  # released on the way out


@pytest.mark.parametrize("command", ["run", "tune", "ensemble", "report", "score", "speed", "demo", "images",
                                     "predict", "export", "distill"])
def test_help_is_answered_before_torch_loads(command):
    """--help used to take 4-5 s because every command imported torch before parsing its arguments."""
    probe = ("import runpy, sys\n"
             f"sys.argv = ['bench.{command}', '--help']\n"
             "try:\n"
             f"    runpy.run_module('bench.{command}', run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "print('TORCH-LOADED' if 'torch' in sys.modules else 'NO-TORCH')\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "usage: python -m bench." in out.stdout and out.stdout.strip().endswith("NO-TORCH"), out.stdout[-300:]


@pytest.mark.parametrize("flags, message", [
    (["--lr", "nan"], "lr = nan: must be a finite number > 0"),
    (["--lr", "0"], "lr = 0.0: must be a finite number > 0"),
    (["--size", "0"], "size = 0: must be an integer >= 16"),
    (["--size", "-32"], "size = -32: must be an integer >= 16"),
    (["--epochs", "-3"], "epochs = -3: epochs must be an integer >= 1"),
    (["--models", ""], "--models names no model"),
    (["--device", "cuda"] if not __import__("torch").cuda.is_available() else ["--device", "cuda:99"],
     "--device cuda"),
])
def test_bad_flags_give_one_clear_message_and_no_run_folder(flags, message, tiny_root, tmp_path, capsys):
    from bench.run import main as run_main
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as e:
        run_main(["--models", "resnet18", "--data", str(tiny_root), "--out", str(out), "--no-progress", *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and message in err and "Recipe(" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_empty_train_split_stops_before_any_run_folder(tiny_copy, tmp_path, capsys):
    from bench.run import main as run_main
    (tiny_copy / "split/train.txt").write_text("")
    (tiny_copy / "split/train_attr.txt").write_text("")
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as e:
        run_main(["--models", "resnet18", "--data", str(tiny_copy), "--out", str(out), "--no-progress"])
    assert e.value.code == 2 and "the train split is empty" in capsys.readouterr().err and not out.exists()


def test_truncated_jpeg_stops_before_any_run_folder(tiny_copy, tmp_path, capsys):
    from bench.run import main as run_main
    f = tiny_copy / "img/00007.jpg"
    f.write_bytes(f.read_bytes()[:-100])
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as e:
        run_main(["--models", "resnet18", "--data", str(tiny_copy), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: 1 problem(s) in dataset {tiny_copy}:\n  {f}: unreadable or "
                                                f"corrupt image (OSError: image file is truncated")
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--runs", "nosuchrun"], "--runs nosuchrun: not among the finished runs in {runs} (run/model): b/resnet18, "
                              "default/resnet18"),
    (["--runs", "default,nosuchrun"], "--runs nosuchrun: not among the finished runs"),  # was dropped silently
    (["--models", "effb3"], "--models effb3: not among the finished runs in {runs} (run/model): b/resnet18, "
                            "default/resnet18"),
])
def test_ensemble_names_an_unknown_run_and_lists_the_finished_ones(flags, message, demo_runs, tmp_path, capsys):
    """`--runs nosuchrun` said 'no finished runs found; train some first' beside two finished runs."""
    from bench.ensemble import main as ensemble_main
    with pytest.raises(SystemExit) as e:
        ensemble_main(["--runs-dir", str(demo_runs), "--out", str(tmp_path / "sub"), "--no-report", *flags])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {message.format(runs=demo_runs)}")
    assert not (tmp_path / "sub").exists()


def test_the_last_problem_line_keeps_its_closing_quote(tiny_copy, tmp_path, capsys):
    """bench.run stripped quotes off the whole message, so the last problem lost its closing one."""
    from bench.run import main as run_main
    path = tiny_copy / "split/val_attr.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:-1], "1 2 3"]) + "\n")
    with pytest.raises(SystemExit) as e:
        run_main(["--models", "resnet18", "--data", str(tiny_copy), "--out", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.rstrip("\n").endswith("'1 2 3'")


def test_a_bad_entry_of_devices_is_named_as_part_of_devices(tiny_root, tmp_path, capsys):
    from bench.run import main as run_main
    with pytest.raises(SystemExit) as e:
        run_main(["--models", "resnet18", "--data", str(tiny_root), "--out", str(tmp_path / "runs"),
                  "--devices", "cpu,cuda:7"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: --devices cpu,cuda:7 (cuda:7): ") and "--device " not in err
