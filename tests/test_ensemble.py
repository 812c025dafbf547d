import json
import shutil

import numpy as np
import pytest

from bench.artifacts import read_run
from bench.ensemble import caruana, combine, cross_validate, main as ensemble_main, member_probs
from bench.score import read_predictions

K = (7, 3, 3, 4, 6, 3)


def one_hot_probs(pred: np.ndarray) -> np.ndarray:
    return np.concatenate([np.eye(k)[pred[:, a]] for a, k in enumerate(K)], 1)


def random_probs(rng, n):
    return np.concatenate([rng.dirichlet(np.ones(k), n) for k in K], 1)


def random_labels(rng, n):
    return np.stack([rng.integers(0, k, n) for k in K], 1)


def test_caruana_chooses_the_perfect_member():
    rng = np.random.default_rng(0)
    labels = random_labels(rng, 200)
    members = [random_probs(rng, 200) for _ in range(4)]
    members.insert(2, one_hot_probs(labels) * 0.9 + 0.1 / np.repeat(K, K))  # perfect, not over-confident
    for bags in (1, 10):
        w = caruana(members, labels, K, bags=bags, iters=10)
        assert w.argmax() == 2 and w[2] > 0.5 and w.sum() == pytest.approx(1)
        comb = combine(members, w, K)
        assert (np.stack([p.argmax(1) for p in np.split(comb, np.cumsum(K)[:-1], 1)], 1) == labels).all()
    wa = caruana(members, labels, K, bags=1, iters=5, per_attribute=True)
    assert wa.shape == (5, 6) and (wa.argmax(0) == 2).all()


def test_combine_arithmetic_and_geometric_by_hand():
    a = np.concatenate([np.full((1, k), 1 / k) for k in K], 1)
    b = a.copy()
    b[0, :7] = [0.4, 0.6, 0, 0, 0, 0, 0]
    m = combine([a, b], np.array([1.0, 1.0]), K, "mean")
    assert m[0, :7] == pytest.approx((a[0, :7] + b[0, :7]) / 2)
    g = combine([a, b], np.array([3.0, 1.0]), K, "geometric")
    expect = np.exp(0.75 * np.log(a[0, :7]) + 0.25 * np.log(np.clip(b[0, :7], 1e-8, 1)))
    assert g[0, :7] == pytest.approx(expect / expect.sum())


def test_cross_validation_is_out_of_sample():
    """Noise members: in-sample selection fits the val noise, cross-validation does not."""
    rng = np.random.default_rng(3)
    labels = random_labels(rng, 300)
    members = [random_probs(rng, 300) for _ in range(8)]
    w = caruana(members, labels, K, bags=1, iters=15, per_attribute=True)
    pred = np.stack([p.argmax(1) for p in np.split(combine(members, w, K), np.cumsum(K)[:-1], 1)], 1)
    in_sample = (pred == labels).mean()
    cv_score, oof = cross_validate("caruana", members, labels, K, per_attribute=True, folds=5)
    cv = cv_score["overall_acc"]
    oof_pred = np.stack([p.argmax(1) for p in np.split(oof, np.cumsum(K)[:-1], 1)], 1)
    assert (oof_pred == labels).mean() == pytest.approx(cv)
    chance = np.mean([1 / k for k in K])
    assert in_sample > cv + 0.02 and abs(cv - chance) < 0.05


def test_tta_views_average_and_recompute_from_checkpoint(demo_runs, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(demo_runs, runs)
    member = read_run(runs / "default/resnet18")
    stored = member.load_probs("val")
    both = member_probs(member, "val", ["plain", "flip"], None, "cpu")
    assert both == pytest.approx((stored["plain"] + stored["flip"]) / 2)
    # drop the stored flip view: it must be recomputed from best.pt and match what training saved
    np.savez(member.probs_path("val"), plain=stored["plain"], labels=stored["labels"])
    again = member_probs(member, "val", ["flip"], None, "cpu")
    assert again == pytest.approx(stored["flip"], abs=1e-4)
    assert (member.dir / "tta_val.npz").exists()
    crop = member_probs(member, "val", ["crop0.8+flip"], None, "cpu")
    assert crop.shape == stored["plain"].shape and not np.allclose(crop, stored["flip"])


def test_ensemble_cli_writes_valid_submission(demo_runs, tmp_path, capsys, tiny_root):
    runs = tmp_path / "runs"
    shutil.copytree(demo_runs, runs)
    out = tmp_path / "sub"
    result = ensemble_main(["--runs-dir", str(runs), "--out", str(out), "--no-report"])
    pred = read_predictions(out / "prediction.txt", K, expected_lines=30)
    assert pred.shape == (30, 6)
    printed = capsys.readouterr().out
    assert "demo test split" in printed and "5-fold CV" in printed
    assert 0 < result["demo_test"]["overall_acc"] <= 1 and result["members"] == ["b/resnet18", "default/resnet18"]
    entry = json.loads((runs / "_ensembles/ensemble/run.json").read_text())
    oof = np.load(runs / "_ensembles/ensemble/probs_val.npz")
    oof_pred = np.stack([p.argmax(1) for p in np.split(oof["plain"], np.cumsum(K)[:-1], 1)], 1)
    assert (oof_pred == oof["labels"]).mean() == pytest.approx(entry["val_cv"]["overall_acc"])
    import zipfile
    assert zipfile.ZipFile(out / "prediction.zip").namelist() == ["prediction.txt"]
    with pytest.raises(SystemExit):  # never overwrites without --force
        ensemble_main(["--runs-dir", str(runs), "--out", str(out), "--no-report"])
    assert "--force" in capsys.readouterr().err
    ensemble_main(["--runs-dir", str(runs), "--out", str(out), "--no-report", "--force", "--weights", "fitted"])


def _fails(capsys, args, message):
    with pytest.raises(SystemExit):
        ensemble_main(args)
    assert message in capsys.readouterr().err


def test_ensemble_error_cases(demo_runs, tmp_path, capsys):
    _fails(capsys, ["--runs-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "s")], "no finished runs")
    runs = tmp_path / "runs"
    shutil.copytree(demo_runs, runs)
    meta_path = runs / "b/resnet18/run.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "config": {**meta["config"], "dataset": "0000other"}}))
    _fails(capsys, ["--runs-dir", str(runs), "--out", str(tmp_path / "s")], "different datasets")
    meta_path.write_text(json.dumps({**meta, "num_classes": [7, 3, 3, 4, 6, 4]}))
    _fails(capsys, ["--runs-dir", str(runs), "--out", str(tmp_path / "s")], "class counts")
    meta_path.write_text(json.dumps(meta))
    (runs / "b/resnet18/best.pt").unlink()
    _fails(capsys, ["--runs-dir", str(runs), "--out", str(tmp_path / "s"), "--tta", "plain,crop0.9"],
           "no checkpoint")
