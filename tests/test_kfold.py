"""k-fold cross-fitting over train + val, and refit on train + val (bench.run --folds / --refit)."""
import json
import shutil

import numpy as np
import pytest

from bench.artifacts import save_probs, write_json
from bench.data import open_dataset
from bench.training import kfold

K = (7, 3, 3, 4, 6, 3)
TINY = ["--size", "32", "--epochs", "1", "--batch-size", "16", "--pretrained", "none", "--no-progress", "--no-report"]


def test_folds_partition_the_pool_and_spread_every_class(tiny_root):
    ds = open_dataset(tiny_root)
    plan = kfold.plan_folds(ds, 4, seed=3)
    paths, labels = kfold.pool(ds)
    fold = np.array(plan["fold"])
    assert plan["n"] == len(paths) == len(ds.splits["train"]) + len(ds.splits["val"]) == len(fold)
    assert sorted(np.unique(fold)) == [0, 1, 2, 3]  # every image in exactly one fold
    for a, k in enumerate(K):
        for c in range(k):
            if (labels[:, a] == c).sum() >= 4:
                assert set(fold[labels[:, a] == c]) == {0, 1, 2, 3}, (a, c)
    assert kfold.plan_folds(ds, 4, seed=3) == plan and kfold.plan_folds(ds, 4, seed=4)["fold"] != plan["fold"]


def memorising_training(monkeypatch, calls):
    """train_model replaced by a perfect memoriser: it predicts an image's label with probability 1 when it trained
    on it, uniform otherwise; its test probabilities are the constant fold + 1."""
    def train(name, ds, store, recipe, size, model_dir, seed=0, extra_meta=None, **kw):
        calls.append(extra_meta["fold"])
        seen = {p: y for p, y in zip(ds.splits["train"].paths, ds.splits["train"].labels)}
        val = ds.splits["val"]
        probs = np.concatenate([np.full((len(val), k), 1 / k) for k in K], 1)
        for i, p in enumerate(val.paths):
            if p in seen:
                probs[i] = np.concatenate([np.eye(k)[seen[p][a]] for a, k in enumerate(K)])
        model_dir.mkdir(parents=True, exist_ok=True)
        save_probs(model_dir / "probs_val.npz", plain=probs, flip=probs, labels=val.labels)
        test = np.full((len(ds.splits["test"]), sum(K)), extra_meta["fold"] + 1.0)
        save_probs(model_dir / "probs_test.npz", plain=test, flip=test)
        meta = {"name": name, "config": {"model": name}, "status": "done", "num_classes": list(K),
                "class_names": [list(c) for c in ds.class_names], "train_time_s": 1.0, "img_per_s": 10.0,
                "best_epoch": 1, "params": 1, "gflops": 0.0}
        write_json(meta, model_dir / "run.json")
        return meta
    monkeypatch.setattr(kfold, "train_model", train)


def test_out_of_fold_probabilities_never_come_from_a_model_that_saw_the_image(tiny_root, tmp_path, monkeypatch):
    from bench.training.train import ImageStore
    from zoo.recipes import RECIPES
    calls = []
    memorising_training(monkeypatch, calls)
    ds = open_dataset(tiny_root)
    store = ImageStore(ds, "cpu", progress=False)  # decodes nothing until a split is asked for (the fake never does)
    meta = kfold.train_kfold("m", ds, store, RECIPES["scratch"], 32, tmp_path / "m", 4, fold_seed=0)
    assert calls == [0, 1, 2, 3]
    with np.load(tmp_path / "m/probs_val.npz") as z:
        _, labels = kfold.pool(ds)
        assert (z["labels"] == labels).all() and len(z["plain"]) == meta["kfold"]["n"]
        uniform = np.concatenate([np.full(k, 1 / k) for k in K])
        assert np.allclose(z["plain"], uniform)  # a memoriser scores chance out of fold: no image was seen
    with np.load(tmp_path / "m/probs_test.npz") as z:
        assert np.allclose(z["plain"], (1 + 2 + 3 + 4) / 4)  # the mean over the fold models
    assert meta["scored_on"] == meta["kfold"]["signature"] and meta["kfold"]["oof_optimistic"] is False
    selecting = RECIPES["v0"]  # selects its epoch on val, i.e. on the fold it predicts: flagged
    tuned = kfold.train_kfold("m", ds, store, RECIPES["scratch"], 32, tmp_path / "t", 4,
                              extra_meta={"from_study": "s"})  # what bench.run --folds --from-study passes
    assert tuned["from_study"] == "s"  # the member used to drop it and read as honest
    assert json.loads((tmp_path / "t/run.json").read_text())["from_study"] == "s"
    assert kfold.train_kfold("m", ds, store, selecting, 32, tmp_path / "v", 4)["kfold"]["oof_optimistic"] is True


def test_kfold_members_resume_ensemble_on_their_folds_and_refuse_mixing(tiny_root, tmp_path, capsys):
    from bench.ensemble import main as ensemble_main
    from bench.reporting.leaderboard import build_report
    from bench.run import main as run_main
    runs = tmp_path / "runs"
    common = ["--data", str(tiny_root), "--out", str(runs), *TINY]
    run_main(["--models", "resnet18", "--folds", "3", "--run", "k", *common])
    member = json.loads((runs / "k/resnet18/run.json").read_text())
    assert member["kfold"]["n"] == 160 and member["val"]["n"] == 160
    meta1 = json.loads((runs / "k/resnet18/fold-1/run.json").read_text())
    meta1["status"] = "training"  # as if killed during fold 1
    (runs / "k/resnet18/fold-1/run.json").write_text(json.dumps(meta1))
    capsys.readouterr()
    run_main(["--models", "resnet18", "--folds", "3", "--run", "k", *common])
    out = capsys.readouterr().out
    assert out.count("already finished") == 2 and "fold 2/3" in out  # folds 0 and 2 skipped, fold 1 redone
    run_main(["--models", "resnet18", "--folds", "3", "--run", "k2", "--seed", "1", *common])
    run_main(["--models", "resnet18", "--run", "plain", *common])
    with pytest.raises(SystemExit):  # a k-fold member and a val member score different images
        ensemble_main(["--runs-dir", str(runs), "--out", str(tmp_path / "s0"), "--no-report"])
    assert "scored on different images" in capsys.readouterr().err
    entry = ensemble_main(["--runs-dir", str(runs), "--runs", "k,k2", "--out", str(tmp_path / "s"), "--no-report"])
    assert entry["val_scoring"].startswith("3-fold CV (the members' own folds over train + val)")
    assert entry["scored_on"] == member["scored_on"] and len(np.loadtxt(tmp_path / "s/prediction.txt")) == 30
    fold0 = json.loads((runs / "k/resnet18/fold-0/run.json").read_text())
    assert member["gflops"] == pytest.approx(3 * fold0["gflops"], rel=1e-3)  # its test prediction runs 3 models
    from bench.reporting import plots as rp
    ylabels, save = {}, rp._save
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rp, "_save", lambda fig, path, key: ylabels.setdefault(path.name, fig.axes[0].get_ylabel())
                   and save(fig, path, key))
        md = build_report(runs, tmp_path / "rep", quiet=True).read_text()
    sig = member["scored_on"]
    assert ylabels["pareto.png"] == "val overall_acc (n = 40)"  # one accuracy-vs-cost figure per set of images
    assert ylabels[f"pareto-{sig.lower()}.png"] == "out-of-fold (train + val) overall_acc (n = 160)"
    assert f"](leaderboard_files/pareto-{sig.lower()}.png)" in md
    assert "## Leaderboard: validation split (n = 40 images)" in md
    assert f"out-of-fold over train + val, 3 folds `{member['scored_on']}` (n = 160 images)" in md
    assert "| out-of-fold (3 folds over train + val): last epoch" in md


def test_refit_trains_on_train_and_val_and_writes_the_test_probabilities(tiny_root, tmp_path):
    from bench.run import main as run_main
    runs = tmp_path / "runs"
    run_main(["--models", "resnet18", "--data", str(tiny_root), "--out", str(runs), "--refit", *TINY])
    d = runs / "default/resnet18"
    meta = json.loads((d / "run.json").read_text())
    refit = json.loads((d / "refit/run.json").read_text())
    assert meta["refit"]["epochs"] == 1 and meta["refit"]["train_images"] == 160
    assert sum(refit["train_class_counts"][0]) == 160 and meta["val"]["n"] == 40  # val statistics: the val run's
    with np.load(d / "probs_test.npz") as a, np.load(d / "refit/probs_test.npz") as b:
        assert (a["plain"] == b["plain"]).all()
    with np.load(d / "probs_test_valrun.npz") as a, np.load(d / "probs_val.npz") as v:
        assert a["plain"].shape == (30, sum(K)) and v["labels"].shape == (40, 6)
    import pandas as pd
    assert meta["refit"]["valrun_train_time_s"] == pytest.approx(pd.read_csv(d / "history.csv")["epoch_s"].sum(),
                                                                 abs=0.02)
    assert meta["train_time_s"] == pytest.approx(meta["refit"]["valrun_train_time_s"] + refit["train_time_s"],
                                                 abs=0.02)  # the member cost both trainings
    shutil.rmtree(runs)


def plain_probs(ckpt, meta, root, split):
    """A split's probabilities predicted by the weights in `ckpt`, computed here."""
    import torch

    from bench.data.images import load_images
    from bench.ensembling.tta import load_trained
    from bench.ensembling.views import view_images
    model = load_trained(meta, ckpt)
    ds = open_dataset(root)
    x = torch.from_numpy(load_images(ds.files(split), meta["config"]["size"], meta["config"]["recipe"]["resize"],
                                     progress=False)).permute(0, 3, 1, 2)

    @torch.no_grad()
    def view(name):
        return torch.cat([p.softmax(1) for p in model(view_images(x, name))], 1).numpy()
    return view


def test_a_refit_members_test_views_come_from_the_refit_weights(tiny_root, tmp_path):
    """Cached TTA views were keyed to best.pt, which a refit does not change: crop views of the val-run model were
    averaged with the refit model's plain/flip test probabilities."""
    from bench.artifacts import read_run
    from bench.ensembling.ensemble import member_views
    from bench.run import main as run_main
    runs = tmp_path / "runs"
    args = ["--models", "resnet18", "--data", str(tiny_root), "--out", str(runs), *TINY]
    run_main(args)
    d = runs / "default/resnet18"
    member_views(read_run(d), ["crop0.9"], None, "cpu")  # cached for test from the val run's weights
    run_main([*args, "--refit"])
    member = read_run(d)
    got = member_views(member, ["crop0.9"], None, "cpu")
    refit_view = plain_probs(d / "refit/best.pt", member.meta, tiny_root, "test")("crop0.9")
    valrun_view = plain_probs(d / "best.pt", member.meta, tiny_root, "val")("crop0.9")
    assert got["test"]["crop0.9"] == pytest.approx(refit_view, abs=1e-4)
    assert got["val"]["crop0.9"] == pytest.approx(valrun_view, abs=1e-4)  # val stays the val run's
    with np.load(d / "probs_test.npz") as z:
        assert z["plain"] == pytest.approx(plain_probs(d / "refit/best.pt", member.meta, tiny_root, "test")("plain"),
                                           abs=1e-4)


def test_probs_test_valrun_follows_a_forced_retrain(tiny_root, tmp_path):
    """probs_test_valrun.npz was written only when absent and survived --force: a stale val-run prediction."""
    from bench.artifacts import read_run
    from bench.run import main as run_main
    runs = tmp_path / "runs"
    args = ["--models", "resnet18", "--data", str(tiny_root), "--out", str(runs), "--refit", *TINY]
    run_main(args)
    d = runs / "default/resnet18"
    before = np.load(d / "probs_test_valrun.npz")["plain"]
    args = [*args, "--lr", "0.03"]  # other weights
    run_main([*args, "--force"])
    after = np.load(d / "probs_test_valrun.npz")["plain"]
    assert not np.allclose(before, after, atol=1e-3)
    assert after == pytest.approx(plain_probs(d / "best.pt", read_run(d).meta, tiny_root, "test")("plain"), abs=1e-4)
    run_main(args)  # the same command again: nothing retrains, nothing moves
    assert (np.load(d / "probs_test_valrun.npz")["plain"] == after).all()


def test_an_out_of_fold_decision_never_depends_on_the_labels_it_scores():
    """With k-fold members the logit-adjustment prior was the pool's class frequencies, counting the fold being
    scored: relabelling one fold moved that fold's own out-of-fold predictions. Now each fold's prior is fitted on
    the other folds, as its models were."""
    from bench.ensembling.decisions import prior_from_counts
    from bench.ensembling.ensemble import cross_validate
    from bench.data import class_counts
    rng = np.random.default_rng(0)
    n, nc = 400, (3,)
    labels = rng.choice(3, (n, 1), p=[0.8, 0.15, 0.05])
    probs = rng.dirichlet([1, 1, 1], n) * 0.8 + np.eye(3)[labels[:, 0]] * 0.2  # informative but noisy
    fold = np.arange(n) % 2
    relabelled = labels.copy()
    relabelled[fold == 0] = 2  # fold 0 all of the rare class: the pool's frequencies change a lot

    def oof(y):  # as make_ensemble calls it: the prior from the member's recorded (pool) counts
        prior = prior_from_counts(class_counts(y, nc))
        return cross_validate("uniform", [probs], y, nc, decision="logit_adjusted", prior=prior, metric="class",
                              fold_ids=fold).pred

    assert (oof(labels)[fold == 0] == oof(relabelled)[fold == 0]).all()
    from bench.ensembling.decisions import decide, fit_rule
    te, tr = fold == 0, fold == 1  # the pool's prior would have moved them: the case is sensitive
    pool = [prior_from_counts(class_counts(y, nc)) for y in (labels, relabelled)]
    moved = [decide("logit_adjusted", probs[te], nc, pi, fit_rule("logit_adjusted", probs[tr], labels[tr], nc, pi,
                                                                  "class")) for pi in pool]
    assert (moved[0] != moved[1]).any()


def test_pool_train_cross_fits_train_alone_and_the_member_is_scored_on_val(tiny_root, tmp_path, capsys):
    """bench.run --folds K --pool train: each fold model trains on the other folds of train only and is scored on
    the real val split; every training image is predicted (probs_train_oof.npz) by the one fold model that never
    trained on it; val and test are the K models' mean, so the member is a normal val row (no `kfold`, no
    `scored_on`). Finished folds and their held-out predictions are skipped on a re-run, and the new artifacts are
    recorded with digests like the others."""
    import torch

    from bench.artifacts import ArtifactError, load_npz, read_run
    from bench.data import class_counts
    from bench.data.images import load_images
    from bench.ensembling.tta import load_trained
    from bench.reporting.leaderboard import build_report
    from bench.run import main as run_main
    runs = tmp_path / "runs"
    args = ["--models", "resnet18", "--folds", "3", "--pool", "train", "--run", "cf", "--data", str(tiny_root),
            "--out", str(runs), *TINY]
    run_main(args)
    d = runs / "cf/resnet18"
    member = read_run(d).meta
    ds = open_dataset(tiny_root)
    tr, va = ds.splits["train"], ds.splits["val"]
    assert "kfold" not in member and "scored_on" not in member and member["val"]["n"] == len(va) == 40
    cf = member["crossfit"]
    assert (cf["k"], cf["pool"], cf["n_train"]) == (3, "train", 120) and cf["signature"].startswith("cf-k3-")
    assert {"probs_train_oof.npz", "probs_val.npz", "probs_test.npz"} <= set(member["files"])
    oof = load_npz(d / "probs_train_oof.npz")
    fold = oof["fold"]
    assert list(oof["paths"]) == list(tr.paths) and (oof["labels"] == tr.labels).all()
    assert sorted(np.unique(fold)) == [0, 1, 2]
    images = torch.from_numpy(load_images(ds.files("train"), 32, member["config"]["recipe"]["resize"],
                                          progress=False)).permute(0, 3, 1, 2)
    val_mean, test_mean = 0, 0
    for f in range(3):
        fdir = d / f"fold-{f}"
        fmeta = read_run(fdir).meta
        # fold f trained on the other folds of train alone (its counts are theirs), and was scored on val
        assert fmeta["train_class_counts"] == [c.tolist() for c in class_counts(tr.labels[fold != f], K)]
        assert fmeta["val"]["n"] == 40 and "probs_heldout.npz" in fmeta["files"]
        model = load_trained(fmeta, fdir / "best.pt")
        with torch.no_grad():
            mine = torch.cat([p.softmax(1) for p in model(images[fold == f].float())], 1).numpy()
        assert oof["plain"][fold == f] == pytest.approx(mine, abs=1e-4)  # its held-out fold, by its own model
        val_mean = val_mean + load_npz(fdir / "probs_val.npz")["plain"] / 3
        test_mean = test_mean + load_npz(fdir / "probs_test.npz")["plain"] / 3
    z = load_npz(d / "probs_val.npz")
    assert z["plain"] == pytest.approx(val_mean, abs=1e-6) and (z["labels"] == va.labels).all()
    assert load_npz(d / "probs_test.npz")["plain"] == pytest.approx(test_mean, abs=1e-6)
    # a re-run skips every finished fold and its held-out predictions; the member keeps its finish time
    fold1 = d / "fold-1" / "probs_heldout.npz"
    stamp = fold1.stat().st_mtime_ns
    capsys.readouterr()
    again = run_main(args)[0]
    out = capsys.readouterr().out
    assert out.count("already finished") == 3 and "held-out training images" not in out
    assert fold1.stat().st_mtime_ns == stamp and again["finished"] == member["finished"]
    # the leaderboard ranks it with the val runs (n = 40), as a normal row
    md = build_report(runs, tmp_path / "rep", quiet=True).read_text()
    assert "## Leaderboard: validation split (n = 40 images)" in md and "out-of-fold over train" not in md
    assert "`cf/resnet18` | scratch | last epoch (val chose nothing) | 40 |" in md
    # a changed out-of-fold file is refused before any reader uses it
    with np.load(d / "probs_train_oof.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["plain"][0, 0] += 0.5
    save_probs(d / "probs_train_oof.npz", **arrays)
    with pytest.raises(ArtifactError, match="probs_train_oof.npz"):
        load_npz(d / "probs_train_oof.npz")


def test_pool_needs_folds_and_a_train_only_member_refuses_a_train_val_one(tiny_root, tmp_path, capsys):
    from bench.run import main as run_main
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as e:
        run_main(["--models", "resnet18", "--pool", "train", "--data", str(tiny_root), "--out", str(runs), *TINY])
    assert e.value.code == 2 and "--pool train: only with --folds K" in capsys.readouterr().err
    assert not runs.exists()
    plan = kfold.plan_folds(open_dataset(tiny_root), 3, 0, "train")
    assert plan["n"] == 120 and plan["signature"] != kfold.plan_folds(open_dataset(tiny_root), 3, 0)["signature"]
