"""bench.predict: images prepared as evaluated give the stored probabilities; an entry's weights, views and tau are
applied; bad input stops with one message and writes nothing (or only the good rows, exit 1)."""
import csv
import json
import os
import shutil

import numpy as np
import pytest

from bench.data import open_dataset
from bench.ensemble import main as ensemble_main
from bench.predict import main as predict_main
from bench.metrics import split_probs

K = (7, 3, 3, 4, 6, 3)


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def csv_probs(path):
    """(paths, decided class names (N, A), probabilities of every class (N, 26)) of a --probs CSV."""
    header, rows = read_csv(path)
    cols = [i for i, h in enumerate(header) if "=" in h]
    names = [i for i, h in enumerate(header) if i > 0 and "=" not in h and not h.endswith("_prob")]
    return ([r[0] for r in rows], np.array([[r[i] for i in names] for r in rows]),
            np.array([[float(r[i]) for i in cols] for r in rows]))


def list_file(tmp_path, files, name="list.txt"):
    path = tmp_path / name
    path.write_text("".join(f"{f}\n" for f in files))
    return path


def class_names_of(pred, meta):
    return np.array([[meta["class_names"][a][c] for a, c in enumerate(row)] for row in pred])


def argmax(probs):
    return np.stack([p.argmax(1) for p in split_probs(probs, K)], 1)


def test_val_images_get_the_stored_probabilities(demo_runs, tiny_root, tmp_path, capsys):
    """An image of val, predicted from its file, gets what training stored for it in probs_val.npz."""
    files = open_dataset(tiny_root, check_images=False).files("val")
    src = list_file(tmp_path, [os.path.relpath(f, tmp_path) for f in files])  # relative to the list file's folder
    stored = np.load(demo_runs / "default/resnet18/probs_val.npz")
    meta = json.loads((demo_runs / "default/resnet18/run.json").read_text())
    out = tmp_path / "plain.csv"
    assert predict_main([str(src), "--model", "default/resnet18", "--runs-dir", str(demo_runs), "--tta", "plain",
                         "--probs", "--out", str(out), "--no-progress", "--batch-size", "16"]) == 0
    paths, names, probs = csv_probs(out)
    assert paths == [str(f) for f in files]
    assert probs == pytest.approx(stored["plain"], abs=2e-6)
    assert (names == class_names_of(argmax(stored["plain"]), meta)).all()
    header, rows = read_csv(out)
    assert header[:3] == ["image", "texture", "texture_prob"]
    # the default views: plain and flip, averaged
    out2 = tmp_path / "tta.csv"
    predict_main([str(src), "--model", "default/resnet18", "--runs-dir", str(demo_runs), "--probs", "--out",
                  str(out2), "--no-progress"])
    both = (stored["plain"] + stored["flip"]) / 2
    _, names, probs = csv_probs(out2)
    assert probs == pytest.approx(both, abs=2e-6)
    assert "views plain+flip, decision argmax" in capsys.readouterr().out
    # without --probs: the decided class's probability only
    out3 = tmp_path / "short.csv"
    predict_main([str(src), "--model", "default/resnet18", "--runs-dir", str(demo_runs), "--out", str(out3),
                  "--no-progress"])
    header, rows = read_csv(out3)
    assert len(header) == 1 + 2 * len(K) and len(rows) == len(files)
    pred = argmax(both)
    for a, p in enumerate(split_probs(both, K)):
        assert [float(r[2 + 2 * a]) for r in rows] == pytest.approx(p[np.arange(len(p)), pred[:, a]], abs=2e-6)


def test_metric_class_decides_with_tau_fitted_on_val(demo_runs, tiny_root, tmp_path):
    from bench.ensembling.decisions import fit_rule, prior_from_counts
    from bench.inference.predict import plan_model
    meta = json.loads((demo_runs / "b/resnet18/run.json").read_text())
    stored = np.load(demo_runs / "b/resnet18/probs_val.npz")
    both = (stored["plain"] + stored["flip"]) / 2
    prior = prior_from_counts(meta["train_class_counts"])
    plan = plan_model(demo_runs, "b/resnet18", "class")
    assert plan.decision == "logit_adjusted"
    assert plan.params == fit_rule("logit_adjusted", both, stored["labels"], K, prior, "class")
    files = open_dataset(tiny_root, check_images=False).files("val")
    out = tmp_path / "p.csv"
    predict_main([str(list_file(tmp_path, files)), "--model", "b/resnet18", "--runs-dir", str(demo_runs),
                  "--metric", "class", "--out", str(out), "--no-progress"])
    _, names, _ = csv_probs(out)
    by_hand = np.stack([(np.log(np.clip(p, 1e-12, 1)) - t * np.log(pi)).argmax(1)
                        for p, pi, t in zip(split_probs(both, K), prior, plan.params["tau"])], 1)
    assert (names == class_names_of(by_hand, meta)).all()


@pytest.fixture(scope="module")
def ensembled(demo_runs, tmp_path_factory):
    """A copy of the demo runs with an entry `ens` (--metric class, geometric combiner, fitted weights)."""
    runs = tmp_path_factory.mktemp("ens") / "runs"
    shutil.copytree(demo_runs, runs)
    ensemble_main(["--runs-dir", str(runs), "--out", str(runs.parent / "sub"), "--no-report", "--metric", "class",
                   "--combine", "geometric", "--weights", "fitted", "--name", "ens"])
    return runs


def test_ensemble_predicts_its_submission(ensembled, tiny_root, tmp_path):
    """The test images, predicted through the entry, get the combined probabilities and the decided classes the
    ensembler stored for its submission."""
    entry = json.loads((ensembled / "_ensembles/ens/run.json").read_text())
    assert entry["decision"] == "logit_adjusted" and entry["combine"] == "geometric"
    stored = np.load(ensembled / "_ensembles/ens/probs_test.npz")
    files = open_dataset(tiny_root, check_images=False).files("test")
    out = tmp_path / "p.csv"
    assert predict_main([str(list_file(tmp_path, files)), "--ensemble", "ens", "--runs-dir", str(ensembled),
                         "--probs", "--out", str(out), "--no-progress"]) == 0
    _, names, probs = csv_probs(out)
    assert probs == pytest.approx(stored["plain"], abs=2e-6)
    assert (names == class_names_of(stored["pred"], entry)).all()
    with pytest.raises(SystemExit) as e:  # the entry was fitted for class
        predict_main([str(files[0]), "--ensemble", "ens", "--runs-dir", str(ensembled), "--metric", "overall",
                      "--out", str(tmp_path / "no.csv")])
    assert e.value.code == 2 and not (tmp_path / "no.csv").exists()


def _fails(capsys, args, message, out):
    with pytest.raises(SystemExit) as e:
        predict_main([*args, "--out", str(out), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not out.exists() and not (out.parent.exists() and [p for p in out.parent.iterdir() if p.name[0] == "."])


def test_unreadable_files_are_listed_and_skipped(demo_runs, tiny_root, tmp_path, capsys):
    files = open_dataset(tiny_root, check_images=False).files("val")[:3]
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, f in enumerate(files):
        shutil.copy(f, folder / ("sub" if i else "") / f.name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(files[0].read_bytes()[:200])  # truncated JPEG
    (folder / ".DS_Store").write_bytes(b"\0\1")  # hidden: not a candidate
    out = tmp_path / "p.csv"
    out.write_text("old")
    with pytest.raises(SystemExit) as e:
        predict_main([str(folder), "--model", "default/resnet18", "--runs-dir", str(demo_runs), "--out", str(out),
                      "--no-progress"])
    assert e.value.code == 1
    captured = capsys.readouterr()
    assert f"skipped {folder / 'broken.jpg'}:" in captured.err and f"skipped {folder / 'notes.txt'}:" in captured.err
    assert "UnidentifiedImageError" in captured.err and "3 image(s)" in captured.out and "2 skipped" in captured.out
    _, rows = read_csv(out)
    assert sorted(r[0] for r in rows) == sorted([str(folder / files[0].name),
                                                 *(str(folder / "sub" / f.name) for f in files[1:])])
    # nothing readable at all, an empty folder, a missing source: exit 2, nothing written
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(files[0].read_bytes()[:200])
    run = ["--model", "default/resnet18", "--runs-dir", str(demo_runs)]
    _fails(capsys, [str(bad), *run], "none of the 1 file(s) could be read", tmp_path / "o1" / "p.csv")
    (tmp_path / "empty").mkdir()
    _fails(capsys, [str(tmp_path / "empty"), *run], "holds no files", tmp_path / "o2.csv")
    _fails(capsys, [str(list_file(tmp_path, [], "none.txt")), *run], "names no image", tmp_path / "o3.csv")
    _fails(capsys, [str(tmp_path / "nowhere"), *run], "no such file or folder", tmp_path / "o4.csv")


def test_bad_runs_and_entries(demo_runs, ensembled, tiny_root, tmp_path, capsys):
    img = str(open_dataset(tiny_root, check_images=False).files("val")[0])
    runs = tmp_path / "runs"
    shutil.copytree(demo_runs, runs)
    (runs / "b/resnet18/best.pt").unlink()  # e.g. a tune trial's folder, or deleted
    _fails(capsys, [img, "--model", "b/resnet18", "--runs-dir", str(runs)], "b/resnet18 has no weights",
           tmp_path / "o1.csv")
    _fails(capsys, [img, "--model", "b/nothing", "--runs-dir", str(runs)], "no run folder", tmp_path / "o2.csv")
    _fails(capsys, [img, "--ensemble", "nope", "--runs-dir", str(ensembled)], "entries in", tmp_path / "o3.csv")
    # a member retrained after the entry: its weights are not the ones the entry was fitted for
    runs2 = tmp_path / "runs2"
    shutil.copytree(ensembled, runs2)
    best = runs2 / "default/resnet18/best.pt"
    os.utime(best, ns=(best.stat().st_atime_ns, best.stat().st_mtime_ns + 10**9))
    _fails(capsys, [img, "--ensemble", "ens", "--runs-dir", str(runs2)], "retrained after", tmp_path / "o4.csv")
    # an entry written before identities were recorded: by time
    entry_path = runs2 / "_ensembles/ens/run.json"
    entry = json.loads(entry_path.read_text())
    del entry["member_identity"]
    entry_path.write_text(json.dumps(entry))
    meta_path = runs2 / "b/resnet18/run.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "finished": "2999-01-01 00:00:00"}))
    _fails(capsys, [img, "--ensemble", "ens", "--runs-dir", str(runs2)], "b/resnet18 (finished 2999",
           tmp_path / "o5.csv")


def test_an_out_that_cannot_be_written_is_refused_before_any_image_is_read(demo_runs, tiny_root, tmp_path, capsys,
                                                                          monkeypatch):
    """--out naming a folder (or a path under a file) failed with a traceback after every image was predicted."""
    import bench.inference.predict as library

    def no_work(*args, **kwargs):
        raise AssertionError("images were predicted")

    monkeypatch.setattr(library, "predict_files", no_work)
    img = str(open_dataset(tiny_root, check_images=False).files("val")[0])
    run = [img, "--model", "default/resnet18", "--runs-dir", str(demo_runs)]
    (tmp_path / "dir").mkdir()
    with pytest.raises(SystemExit) as e:
        predict_main([*run, "--out", str(tmp_path / "dir"), "--no-progress"])
    assert e.value.code == 2 and list((tmp_path / "dir").iterdir()) == []
    assert capsys.readouterr().err == (f"error: --out {tmp_path / 'dir'} is a folder; name the CSV file, e.g. "
                                       f"{tmp_path / 'dir' / 'predictions.csv'}\n")
    (tmp_path / "file").write_text("x")
    _fails(capsys, run, f"--out {tmp_path / 'file/sub/p.csv'}: {tmp_path / 'file'} is a file, not a folder",
           tmp_path / "file" / "sub" / "p.csv")


def _plan(attributes, class_names):
    from bench.inference.predict import Plan
    k = tuple(len(c) for c in class_names)
    return Plan("model r/m", ["r/m"], [(32, "squash")], ["plain"], np.ones(1), "mean", "argmax", {}, None,
                "overall", tuple(attributes), class_names, k)


def test_csv_columns_never_clash_with_attribute_names(tmp_path):
    """An attribute may be called `path` (the image column is `image`, which no attribute can be called); attributes
    whose columns would repeat a name (`colour` and `colour_prob`) are refused before anything is written."""
    from bench.inference.predict import PredictError, Prediction, csv_header, csv_text
    plan = _plan(["path", "colour"], [["no", "yes"], ["red", "green", "blue"]])
    probs = np.array([[0.2, 0.8, 0.1, 0.3, 0.6], [0.9, 0.1, 0.5, 0.25, 0.25]])
    result = Prediction([tmp_path / "a.jpg", tmp_path / "b.jpg"], probs, np.array([[1, 2], [0, 0]]), [])
    (tmp_path / "p.csv").write_text(csv_text(result, plan, all_probs=True))
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image", "path", "path_prob", "colour", "colour_prob", "path=no", "path=yes",
                             "colour=red", "colour=green", "colour=blue"]
    assert [r["image"] for r in rows] == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    assert [(r["path"], r["path_prob"], r["colour"], r["colour_prob"]) for r in rows] == [
        ("yes", "0.800000", "blue", "0.600000"), ("no", "0.900000", "red", "0.500000")]
    with pytest.raises(PredictError, match="more than one column named colour_prob"):
        csv_header(_plan(["colour", "colour_prob"], [["red", "blue"], ["low", "high"]]))
    with pytest.raises(PredictError, match="named colour=red"):
        csv_header(_plan(["colour", "colour=red"], [["red", "blue"], ["x", "y"]]), all_probs=True)
    assert csv_header(_plan(["colour", "colour=red"], [["red", "blue"], ["x", "y"]]))[0] == "image"
