"""One working folder holds all state: runs/, studies/, reports/, submission/ (--workdir, $FASHION_BENCH_HOME, else
the current directory); nothing lands in the current directory when it is moved, nor in the installed package."""
import json
from pathlib import Path

import pytest

from test_tune import fake_training

TINY = ["--size", "32", "--epochs", "1", "--batch-size", "16", "--pretrained", "none", "--no-progress"]


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def test_every_stage_writes_into_the_working_folder(tiny_root, tmp_path, monkeypatch, capsys):
    from bench.ensemble import main as ensemble_main
    from bench.report import main as report_main
    from bench.run import main as run_main
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("FASHION_BENCH_HOME", str(home))
    run_main(["--models", "resnet18", "--data", str(tiny_root), *TINY])
    assert f"artifacts in {home / 'runs' / 'default'}" in capsys.readouterr().out
    assert json.loads((home / "runs/default/resnet18/run.json").read_text())["status"] == "done"
    assert (home / "reports/leaderboard.md").exists()
    monkeypatch.delenv("FASHION_BENCH_HOME")
    other = tmp_path / "other"  # --workdir wins over the variable; here the variable is unset and --workdir names home
    ensemble_main(["--workdir", str(home), "--no-report"])
    assert f"submission to {home / 'submission'}" in capsys.readouterr().out
    assert (home / "submission/prediction.txt").exists() and (home / "runs/_ensembles/ensemble/run.json").exists()
    monkeypatch.setenv("FASHION_BENCH_HOME", str(other))
    assert report_main(["--workdir", str(home)]) == home / "reports/leaderboard.md"
    assert files_under(cwd) == [] and not other.exists()


def test_tune_keeps_its_study_and_trials_in_the_working_folder(tiny_root, tmp_path, monkeypatch, capsys):
    from bench.tune import main as tune_main
    calls = fake_training(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("bench.tuning.storage.LEGACY_DB", tmp_path / "none/studies/fashion.db")  # not the checkout's
    home = tmp_path / "w"
    tune_main(["--workdir", str(home), "--data", str(tiny_root), "--study", "s", "--trials", "2", "--epochs", "1",
               *TINY[:2], "--no-progress"])
    out = capsys.readouterr().out
    assert f"storage sqlite:///{home / 'studies/fashion.db'}" in out
    assert (home / "studies/fashion.db").exists() and (home / "reports/tune-s.md").exists()
    assert f"trials in {home / 'studies/trials/s'}" in out
    assert [c["dir"] for c in calls] == [home / "studies/trials/s/trial-0000", home / "studies/trials/s/trial-0001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # nothing beside it


def test_a_study_database_left_in_the_package_folder_is_not_forked(tiny_root, tmp_path, monkeypatch, capsys):
    """Before the working folder, studies/fashion.db was written inside the installed package: a new default must
    not silently start an empty study beside it, but say how to move it."""
    from bench.run import main as run_main
    from bench.tune import main as tune_main
    legacy = tmp_path / "site-packages/studies/fashion.db"
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"")
    monkeypatch.setattr("bench.tuning.storage.LEGACY_DB", legacy)
    home = tmp_path / "w"
    for main, argv in ((tune_main, ["--study", "s", "--trials", "1"]),
                       (run_main, ["--models", "resnet18", "--from-study", "s"])):
        with pytest.raises(SystemExit) as e:
            main(["--workdir", str(home), "--data", str(tiny_root), *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"mv {legacy} {home / 'studies/fashion.db'}" in err and "--storage" in err
    assert not (home / "studies").exists()
    (home / "studies").mkdir(parents=True)  # once moved (here: a new one exists), the old file is ignored
    (home / "studies/fashion.db").write_bytes(b"")
    from bench.tuning.storage import default_url
    from bench.workdir import resolve
    assert default_url(resolve(home)) == f"sqlite:///{home / 'studies/fashion.db'}"


def test_a_folder_holding_the_working_folders_subfolders_runs_the_commands(tmp_path):
    """`python -m` puts the current folder first on the import path: a working folder's studies/ (which bench.tune
    itself makes) hid the `studies` package the search spaces lived in, so bench.tune could not start there. No
    folder the suite makes may share a name with an importable package."""
    import subprocess
    import sys
    for name in ("runs", "studies", "reports", "submission"):
        (tmp_path / "w" / name).mkdir(parents=True)
    done = subprocess.run([sys.executable, "-m", "bench.tune", "--help"], cwd=tmp_path / "w", capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m bench.tune")
    probe = ("import importlib.util; print([n for n in ('runs', 'studies', 'reports', 'submission') "
             "if importlib.util.find_spec(n)])")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


def test_the_repository_root_as_working_folder_is_not_taken_for_an_old_install(tiny_root, tmp_path, monkeypatch,
                                                                                capsys):
    """Following the README in the repository root makes ROOT/studies/fashion.db, where versions before 2026-11-24
    kept theirs: tuning there and then in another folder must not stop with 'an older version left a study
    database'; a database there that no new version has used still stops it."""
    from bench.tune import main as tune_main
    fake_training(monkeypatch)
    root = tmp_path / "checkout"
    monkeypatch.setattr("bench.tuning.storage.LEGACY_DB", root / "studies/fashion.db")
    monkeypatch.chdir(root.parent)
    tiny = ["--data", str(tiny_root), "--study", "s", "--trials", "1", "--epochs", "1", *TINY[:2], "--no-progress",
            "--no-report"]
    tune_main(["--workdir", str(root), *tiny])  # the repository root used as the working folder
    assert (root / "studies/fashion.db").exists()
    tune_main(["--workdir", str(tmp_path / "other"), *tiny])
    assert (tmp_path / "other/studies/fashion.db").exists()
    (root / "studies/.working-folder").unlink()  # as an older version left it
    with pytest.raises(SystemExit) as e:
        tune_main(["--workdir", str(tmp_path / "third"), *tiny])
    assert e.value.code == 2
    assert f"mv {root / 'studies/fashion.db'} {tmp_path / 'third/studies/fashion.db'}" in capsys.readouterr().err
