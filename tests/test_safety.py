"""Shared run folders are safe to open: no checkpoint runs code in any reader, paths read from run.json and entries
stay inside their folder, a changed artifact is refused by name, and a .safetensors export predicts as the run does."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.artifacts import ArtifactError, read_run, verify, write_run
from bench.checkpoints import UnsafeCheckpoint, load, numpy_rng_state, save

RUN = ["--size", "32", "--epochs", "2", "--batch-size", "16", "--pretrained", "none", "--no-progress"]


class Boom:
    """Unpickling this runs `touch MARKER` (what a hostile checkpoint could do instead)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def runs(demo_runs, tmp_path):
    dst = tmp_path / "runs"
    shutil.copytree(demo_runs, dst)
    return dst


def plant(ckpt: Path, marker: Path) -> None:
    """Add a code-running object to a checkpoint and record the file's new digest as if the run had written it, so
    that only the loader stands between the file and the code."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["note"] = Boom(marker)
    torch.save(state, ckpt)
    run = read_run(ckpt.parent)
    if run.done:
        write_run(run.meta, ckpt.parent)


def refused(e, capsys, path: Path, marker: Path) -> None:
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert str(path) in err and "refused" in err and "bench.trust" in err and "posix.system" in err
    assert not marker.exists()


def test_predict_refuses_a_checkpoint_that_would_run_code(runs, tiny_root, tmp_path, capsys):
    from bench.predict import main as predict_main
    marker = tmp_path / "marker"
    plant(runs / "default/resnet18/best.pt", marker)
    image = next((tiny_root / "img").iterdir())
    with pytest.raises(SystemExit) as e:
        predict_main([str(image), "--model", "default/resnet18", "--runs-dir", str(runs), "--out",
                      str(tmp_path / "p.csv"), "--no-progress"])
    refused(e, capsys, runs / "default/resnet18/best.pt", marker)
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("fmt", ["onnx", "safetensors"])
def test_export_refuses_a_checkpoint_that_would_run_code(runs, tmp_path, capsys, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    from bench.export import main as export_main
    marker = tmp_path / "marker"
    plant(runs / "default/resnet18/best.pt", marker)
    with pytest.raises(SystemExit) as e:
        export_main(["--model", "default/resnet18", "--format", fmt, "--runs-dir", str(runs), "--out",
                     str(tmp_path / f"m.{fmt}")])
    refused(e, capsys, runs / "default/resnet18/best.pt", marker)
    assert not (tmp_path / f"m.{fmt}").exists()


def test_ensemble_computing_a_view_refuses_a_checkpoint_that_would_run_code(runs, tiny_root, tmp_path, capsys):
    from bench.ensemble import main as ensemble_main
    marker = tmp_path / "marker"
    plant(runs / "b/resnet18/best.pt", marker)
    with pytest.raises(SystemExit) as e:
        ensemble_main(["--runs-dir", str(runs), "--out", str(tmp_path / "sub"), "--tta", "plain,crop0.9",
                       "--data", str(tiny_root), "--no-report"])
    refused(e, capsys, runs / "b/resnet18/best.pt", marker)


def test_distillation_teacher_refuses_a_checkpoint_that_would_run_code(runs, tiny_root, tmp_path, capsys):
    from bench.distill import main as distill_main
    marker = tmp_path / "marker"
    plant(runs / "b/resnet18/best.pt", marker)
    with pytest.raises(SystemExit) as e:
        distill_main(["--teacher", "default,b", "--student", "resnet18", "--out", str(runs), "--data",
                      str(tiny_root), "--no-report", *RUN])
    refused(e, capsys, runs / "b/resnet18/best.pt", marker)


def test_resume_refuses_a_state_that_would_run_code(runs, tiny_root, tmp_path, capsys):
    """An unfinished run whose last.pt holds code: the same bench.run command stops before training."""
    from bench.run import main as run_main
    d = runs / "default/resnet18"
    meta = read_run(d).meta
    meta["status"] = "training"
    write_run(meta, d)
    marker = tmp_path / "marker"
    plant(d / "last.pt", marker)
    with pytest.raises(SystemExit) as e:
        run_main(["--models", "resnet18", "--data", str(tiny_root), "--out", str(runs), "--no-report", *RUN])
    refused(e, capsys, d / "last.pt", marker)


def test_a_state_written_before_numpy_was_converted_still_loads_and_restores_the_rng(tmp_path):
    """States of earlier versions hold np.random.get_state() as a numpy array: the safe loader takes exactly that."""
    np.random.seed(3)
    st = np.random.get_state()
    torch.save({"rng": {"numpy": st}, "model": {"w": torch.ones(2)}}, tmp_path / "old.pt")
    back = load(tmp_path / "old.pt")
    expected = np.random.random(4)
    np.random.set_state(numpy_rng_state(back["rng"]["numpy"]))
    assert np.random.random(4) == pytest.approx(expected)
    # and the new form: no numpy inside, the same RNG restored
    np.random.seed(3)
    save({"rng": {"numpy": np.random.get_state()}, "best": np.float64(0.5)}, tmp_path / "new.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "new.pt") == []
    back = load(tmp_path / "new.pt")
    assert back["best"] == 0.5 and type(back["best"]) is float
    np.random.set_state(numpy_rng_state(back["rng"]["numpy"]))
    assert np.random.random(4) == pytest.approx(expected)


def test_every_checkpoint_a_run_writes_passes_the_restricted_unpickler(demo_runs):
    for f in ("last.pt", "best.pt"):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(demo_runs / "default/resnet18" / f) == []


def test_trust_resaves_a_users_own_file_once(tmp_path, capsys):
    from bench.trust import main as trust_main
    path = tmp_path / "mine.pt"
    torch.save({"model": {"w": torch.ones(2)}, "score": np.float64(0.25)}, path)  # a numpy scalar: refused
    with pytest.raises(UnsafeCheckpoint, match="numpy"):
        load(path)
    assert trust_main([str(path)]) == 0
    assert load(path)["score"] == 0.25


# --- paths stay inside --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink"])
def test_a_refit_dir_outside_the_run_is_refused(runs, tiny_root, tmp_path, capsys, where):
    from bench.predict import main as predict_main
    d = runs / "default/resnet18"
    meta = read_run(d).meta
    if where == "dotdot":
        target = "../../b/resnet18"
    elif where == "absolute":
        target = str(runs / "b/resnet18")
    else:
        (d / "elsewhere").symlink_to(runs / "b/resnet18")
        target = "elsewhere"
    meta["refit"] = {"dir": target, "epochs": 2}
    write_run(meta, d)
    with pytest.raises(SystemExit) as e:
        predict_main([str(next((tiny_root / "img").iterdir())), "--model", "default/resnet18", "--runs-dir",
                      str(runs), "--out", str(tmp_path / "p.csv"), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "refit.dir" in err and str(d / "run.json") in err and repr(target) in err
    assert not (tmp_path / "p.csv").exists()


def test_kfold_folders_weights_files_and_entry_members_outside_are_refused(runs, tmp_path):
    from bench.ensemble import main as ensemble_main
    from bench.ensembling.ensemble import EnsembleError
    from bench.ensembling.entries import read_entry
    from bench.inference.predict import member_checkpoints
    d = runs / "default/resnet18"
    meta = read_run(d).meta
    meta["kfold"] = {"k": 1, "folds": ["../../b/resnet18"]}
    write_run(meta, d)
    with pytest.raises(ArtifactError, match="kfold.folds"):
        member_checkpoints(read_run(d))
    del meta["kfold"]
    for outside in ("/etc/passwd", "../../b/resnet18/best.pt"):  # a weights_file in someone's run.json: loaded as is
        meta["weights_file"] = outside
        write_run(meta, d)
        with pytest.raises(ArtifactError, match="weights_file"):
            member_checkpoints(read_run(d))
    ensemble_main(["--runs-dir", str(runs), "--runs", "b", "--out", str(tmp_path / "sub"), "--name", "e",
                   "--no-report"])
    entry = runs / "_ensembles/e/run.json"
    data = json.loads(entry.read_text())
    data["members"] = ["../../../etc"]
    entry.write_text(json.dumps(data))
    with pytest.raises(EnsembleError, match="field members is '../../../etc'"):
        read_entry(runs, "e")


# --- what is read is what was written -----------------------------------------------------------------------------
def edit_value(path: Path) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["plain"] = arrays["plain"].copy()
    arrays["plain"][0, 0] += 0.25
    np.savez_compressed(path, **arrays)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("change", [truncate, edit_value, "copied"])
def test_a_changed_probs_file_is_refused_by_name(runs, tmp_path, capsys, change):
    from bench.ensemble import main as ensemble_main
    from bench.reporting.leaderboard import build_report
    target = runs / "b/resnet18/probs_val.npz"
    if change == "copied":
        shutil.copy(runs / "default/resnet18/probs_val.npz", target)
    else:
        change(target)
    with pytest.raises(ArtifactError, match="changed since training"):
        verify(target)
    with pytest.raises(SystemExit) as e:
        ensemble_main(["--runs-dir", str(runs), "--out", str(tmp_path / "sub"), "--no-report"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and str(target) in err and "changed since training" in err
    build_report(runs, out=tmp_path / "rep")
    text = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert "`b/resnet18`: left out" in text and "changed since training" in text
    import pandas as pd
    ranked = list(pd.read_csv(tmp_path / "rep" / "leaderboard.csv")["entry"])
    assert "default/resnet18" in ranked and "b/resnet18" not in ranked


def test_an_untouched_run_verifies_and_a_file_not_recorded_is_refused(runs):
    d = runs / "default/resnet18"
    recorded = read_run(d).meta["files"]
    assert set(recorded) == {"best.pt", "probs_val.npz", "probs_test.npz"}
    for name in recorded:
        assert verify(d / name) == d / name
    shutil.copy(d / "probs_test.npz", d / "probs_test_valrun.npz")  # a file the finished run never wrote
    with pytest.raises(ArtifactError, match="not recorded"):
        verify(d / "probs_test_valrun.npz")


def test_a_changed_tta_cache_is_recomputed_not_used(runs, tiny_root):
    from bench.ensembling.ensemble import member_views
    member = read_run(runs / "default/resnet18")
    first = member_views(member, ["crop0.8"], tiny_root, "cpu", ("val",))["val"]["crop0.8"]
    cache = member.dir / "tta_val.npz"
    with np.load(cache) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["crop0.8"] = np.zeros_like(arrays["crop0.8"])  # a hand-edited cache
    np.savez_compressed(cache, **arrays)
    again = member_views(member, ["crop0.8"], tiny_root, "cpu", ("val",))["val"]["crop0.8"]
    assert again == pytest.approx(first, abs=1e-6)


# --- weights to share ---------------------------------------------------------------------------------------------
def test_safetensors_export_predicts_as_the_run_and_starts_a_backbone(runs, tiny_root, tmp_path):
    from safetensors import safe_open

    from bench.export import main as export_main
    from bench.predict import main as predict_main
    from zoo.pretrained import build_backbone
    out = tmp_path / "shared.safetensors"
    export_main(["--model", "default/resnet18", "--format", "safetensors", "--runs-dir", str(runs), "--out", str(out),
                 "--metric", "class"])
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["network"])["config"]["model"] == "resnet18"
    assert json.loads(meta["attributes"]) == read_run(runs / "default/resnet18").meta["attributes"]
    src = tiny_root / "split" / "val.txt"
    images = [tiny_root / line for line in src.read_text().split()]
    listing = tmp_path / "val.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    by_run, by_file = tmp_path / "run.csv", tmp_path / "file.csv"
    predict_main([str(listing), "--model", "default/resnet18", "--runs-dir", str(runs), "--metric", "class",
                  "--probs", "--out", str(by_run), "--no-progress"])
    shutil.rmtree(runs)  # the file alone is enough
    predict_main([str(listing), "--model", str(out), "--probs", "--out", str(by_file), "--no-progress"])
    assert by_file.read_text() == by_run.read_text()  # class for class, probability for probability
    backbone, init = build_backbone("resnet18", str(out))
    assert init["init"] == "file" and init["matched"] == init["of"]  # every backbone tensor came from the file


def test_trusting_a_runs_checkpoint_records_its_digest_only(runs, tmp_path, capsys):
    """bench.trust re-saves the user's best.pt and records that file's new digest; another file of the run that was
    changed stays refused (trusting one file is not trusting the folder)."""
    from bench.trust import main as trust_main
    d = runs / "default/resnet18"
    state = torch.load(d / "best.pt", map_location="cpu", weights_only=True)
    state["score"] = np.float64(0.5)  # needs a global the safe loader refuses; harmless
    torch.save(state, d / "best.pt")
    edit_value(d / "probs_val.npz")
    assert trust_main([str(d / "best.pt")]) == 0
    assert load(d / "best.pt")["score"] == 0.5  # verified against the new digest, then read safely
    with pytest.raises(ArtifactError, match="changed since training"):
        verify(d / "probs_val.npz")
