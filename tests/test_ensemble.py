import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from sklearn.model_selection import KFold

from bench.artifacts import read_run, write_run
from bench.data import read_predictions
from bench.data.folds import stratified_folds
from bench.ensemble import main as ensemble_main
from bench.ensembling.combiners import combine
from bench.ensembling.ensemble import EnsembleError, cross_validate, member_probs, write_submission
from bench.ensembling.weightings import caruana

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


def test_caruana_returns_the_best_size_on_the_path_not_the_last():
    """A alone and B alone are right on half the rows, (A+B)/2 on all, (2A+B)/3 and (A+2B)/3 on half again. With
    init=1 the path is A, then +B (accuracy 1), then +A or +B (0.5): the best size is 2, the last is 3."""
    a = np.array([[0.95, 0.05]] * 2 + [[0.2, 0.8]] * 2)  # class 0 is right everywhere
    b = a[::-1].copy()
    labels = np.zeros((4, 1), int)
    acc = lambda w: (combine([a, b], w, (2,)).argmax(1) == 0).mean()  # noqa: E731
    assert acc(np.array([1, 1])) == 1 and acc(np.array([2, 1])) == acc(np.array([1, 2])) == 0.5
    w = caruana([a, b], labels, (2,), bags=1, init=1, iters=2)
    assert w.tolist() == [0.5, 0.5]  # the old code returned the last iteration, A twice and B once: 2/3, 1/3
    assert caruana([a, b], labels, (2,), bags=1, init=1, iters=7).tolist() == [0.5, 0.5]


def zipf_labels(rng, n):
    """Long-tailed classes: class c of each attribute has weight 1 / (c + 1)^2."""
    return np.stack([rng.choice(k, n, p=(w := 1 / np.arange(1, k + 1) ** 2) / w.sum()) for k in K], 1)


@pytest.mark.parametrize("n,k,seed", [(79, 6, 23), (61, 6, 27), (315, 5, 1), (512, 3, 2), (452, 7, 4)])
def test_stratified_folds_partition_and_spread_every_class(n, k, seed):
    labels = zipf_labels(np.random.default_rng(seed), n)
    fold = stratified_folds(labels, k, seed)
    assert fold.shape == (n,) and set(fold.tolist()) == set(range(k))  # every row in exactly one fold 0..k-1
    sizes = np.bincount(fold, minlength=k)
    assert sizes.sum() == n and sizes.max() - sizes.min() <= 1
    for a, nc in enumerate(K):
        for c in range(nc):
            rows = labels[:, a] == c
            if rows.sum() >= k:
                assert set(fold[rows].tolist()) == set(range(k)), (a, c)
    assert (stratified_folds(labels, k, seed) == fold).all()  # deterministic per seed
    assert not (stratified_folds(labels, k, seed + 1) == fold).all()


def test_plain_kfold_misses_a_rare_class_stratified_folds_do_not():
    rng = np.random.default_rng(0)
    labels = random_labels(rng, 100)
    labels[:, 0] = rng.integers(0, 6, 100)
    labels[rng.choice(100, 5, replace=False), 0] = 6  # class 6 of attribute 0: exactly k = 5 examples
    kfold = np.zeros(100, int)
    for f, (_, test_idx) in enumerate(KFold(5, shuffle=True, random_state=0).split(labels)):
        kfold[test_idx] = f
    assert len(set(kfold[labels[:, 0] == 6])) < 5  # some fold has no example of it
    assert sorted(stratified_folds(labels, 5, 0)[labels[:, 0] == 6].tolist()) == [0, 1, 2, 3, 4]


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
    fit = cross_validate("caruana", members, labels, K, per_attribute=True, folds=5)
    cv, oof = fit.score["overall_acc"], fit.probs
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
    write_run(member.meta, member.dir)  # a run that stored no flip view (its run.json records this file)
    again = member_probs(member, "val", ["flip"], None, "cpu")
    assert again == pytest.approx(stored["flip"], abs=1e-4)
    assert (member.dir / "tta_val.npz").exists()
    crop = member_probs(member, "val", ["crop0.8+flip"], None, "cpu")
    assert crop.shape == stored["plain"].shape and not np.allclose(crop, stored["flip"])


def test_cached_tta_views_of_old_weights_are_recomputed(demo_runs, tmp_path):
    """After the weights change (bench.run --force), a cached view must come from the new weights."""
    import torch
    runs = tmp_path / "runs"
    shutil.copytree(demo_runs, runs)
    member = read_run(runs / "default/resnet18")
    old = member_probs(member, "val", ["crop0.8"], None, "cpu")
    ckpt = torch.load(member.dir / "best.pt", weights_only=True)
    ckpt["model"]["head.bias"] += torch.arange(26, dtype=torch.float32)  # other weights, other predictions
    torch.save(ckpt, member.dir / "best.pt")
    write_run(member.meta, member.dir)  # as a retraining does: run.json records the new weights' digest
    new = member_probs(member, "val", ["crop0.8"], None, "cpu")
    assert not np.allclose(new, old, atol=1e-3)
    assert member_probs(member, "val", ["crop0.8"], None, "cpu") == pytest.approx(new)  # and cached again


def member_test_probs(runs, names):
    """Each member's test probabilities averaged over the default views plain and flip, read straight from disk."""
    out = []
    for name in names:
        z = np.load(runs / name / "probs_test.npz")
        out.append((z["plain"] + z["flip"]) / 2)
    return out


def argmax_per_attribute(probs):
    return np.stack([p.argmax(1) for p in np.split(probs, np.cumsum(K)[:-1], 1)], 1)


def test_ensemble_cli_writes_valid_submission(demo_runs, tmp_path, capsys, tiny_root):
    runs = tmp_path / "runs"
    shutil.copytree(demo_runs, runs)
    out = tmp_path / "sub"
    result = ensemble_main(["--runs-dir", str(runs), "--out", str(out), "--no-report"])
    pred = read_predictions(out / "prediction.txt", K, expected_lines=30)
    assert pred.shape == (30, 6)
    printed = capsys.readouterr().out
    assert "demo test split" in printed and "5-fold CV" in printed
    assert result["members"] == ["b/resnet18", "default/resnet18"]
    hidden = np.loadtxt(tiny_root / "hidden/test_attr.txt", dtype=int)
    assert result["demo_test"]["overall_acc"] == pytest.approx((np.loadtxt(out / "prediction.txt", dtype=int)
                                                                == hidden).mean())
    entry = json.loads((runs / "_ensembles/ensemble/run.json").read_text())
    assert entry["val_scoring"] == "5-fold CV (stratified): weights fitted out-of-fold for overall"
    oof = np.load(runs / "_ensembles/ensemble/probs_val.npz")
    assert (argmax_per_attribute(oof["plain"]) == oof["labels"]).mean() == pytest.approx(entry["val_cv"]["overall_acc"])
    with zipfile.ZipFile(out / "prediction.zip") as z:
        assert z.namelist() == ["prediction.txt"] and z.read("prediction.txt") == (out / "prediction.txt").read_bytes()
    with pytest.raises(SystemExit):  # never overwrites without --force
        ensemble_main(["--runs-dir", str(runs), "--out", str(out), "--no-report"])
    assert "--force" in capsys.readouterr().err

    ensemble_main(["--runs-dir", str(runs), "--out", str(out), "--no-report", "--force", "--weights", "fitted"])
    entry = json.loads((runs / "_ensembles/ensemble/run.json").read_text())
    w = np.array(entry["weights"])
    assert w.shape == (2,) and (w >= 0).all() and w.sum() == pytest.approx(1)
    comb = sum(wi * p for wi, p in zip(w, member_test_probs(runs, entry["members"])))
    assert (np.loadtxt(out / "prediction.txt", dtype=int) == argmax_per_attribute(comb)).all()

    ensemble_main(["--runs-dir", str(runs), "--out", str(out), "--no-report", "--force", "--weights", "uniform"])
    entry = json.loads((runs / "_ensembles/ensemble/run.json").read_text())
    assert entry["val_scoring"] == "in-sample (uniform weights, argmax: nothing fitted)" and entry["val_cv"] is None
    val = [np.load(runs / n / "probs_val.npz") for n in entry["members"]]
    in_sample = np.mean([(z["plain"] + z["flip"]) / 2 for z in val], 0)
    assert np.load(runs / "_ensembles/ensemble/probs_val.npz")["plain"] == pytest.approx(in_sample)
    from bench.reporting.leaderboard import build_report
    build_report(runs, tmp_path / "rep", quiet=True)
    md = (tmp_path / "rep/leaderboard.md").read_text()
    selects = {json.loads((runs / n / "run.json").read_text())["config"]["recipe"]["select"] for n in entry["members"]}
    members = ("members kept their last epoch (chose nothing on these images)" if selects == {"last"}
               else "members selected on val (optimistic)")
    assert f"| in-sample (uniform weights, argmax: nothing fitted); {members} |" in md
    assert "5-fold CV" not in md


def test_submission_is_never_half_written(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    old, new = random_labels(rng, 20), random_labels(rng, 20)
    out = tmp_path / "sub"
    write_submission(old, out, K)
    before = {f: (out / f).read_bytes() for f in ("prediction.txt", "prediction.zip")}

    def broken_write(self, *args, **kwargs):  # the disk fills up half-way through the zip
        self.fp.write(b"PK\x03\x04 half a member")
        raise OSError("No space left on device")

    with monkeypatch.context() as m:
        m.setattr(zipfile.ZipFile, "write", broken_write)
        with pytest.raises(OSError):
            write_submission(new, out, K, force=True)
        with pytest.raises(OSError):
            write_submission(new, tmp_path / "fresh", K)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # old pair intact, no temporary files
    assert list((tmp_path / "fresh").iterdir()) == []
    with zipfile.ZipFile(out / "prediction.zip") as z:
        assert z.testzip() is None and z.read("prediction.txt") == before["prediction.txt"]

    renames = []

    def killed_before_txt(src, dst):  # killed between the zip's rename and the txt's
        if str(dst).endswith(".txt"):
            raise KeyboardInterrupt
        renames.append(dst)
        real_replace(src, dst)

    real_replace = os.replace
    with monkeypatch.context() as m:
        m.setattr(os, "replace", killed_before_txt)
        with pytest.raises(KeyboardInterrupt):
            write_submission(new, out, K, force=True)
    assert renames == [out / "prediction.zip"]
    assert sorted(f.name for f in out.iterdir()) == ["prediction.zip"]  # never a txt beside someone else's zip
    with zipfile.ZipFile(out / "prediction.zip") as z:
        assert z.testzip() is None and read_predictions_text(z.read("prediction.txt")) == new.tolist()
    with pytest.raises(EnsembleError, match="--force"):
        write_submission(new, out, K)
    write_submission(new, out, K, force=True)
    assert np.loadtxt(out / "prediction.txt", dtype=int).tolist() == new.tolist()


def read_predictions_text(data: bytes) -> list:
    return [[int(v) for v in line.split()] for line in data.decode().splitlines()]


def _fails(capsys, args, message):
    with pytest.raises(SystemExit):
        ensemble_main(args)
    assert message in capsys.readouterr().err


def test_ensemble_error_cases(demo_runs, tmp_path, capsys):
    _fails(capsys, ["--runs-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "s")], "no finished runs")
    (tmp_path / "s").mkdir()
    (tmp_path / "s/prediction.txt").write_text("")
    # an existing submission is refused before any member is looked at, not after all the work
    _fails(capsys, ["--runs-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "s")], "pass --force")
    (tmp_path / "s/prediction.txt").unlink()
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
