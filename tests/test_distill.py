"""bench.distill: the per-head KD loss, the teacher's targets (cached and online), honesty checks, resume."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from bench.artifacts import read_run
from bench.distilling.distill import TARGETS_FILE, DistillSpec, distill, prepare
from bench.distilling.kd import DistillLoss, retemper
from bench.distilling.teacher import OnlineTeacher, Teacher, cached_targets, load_teacher, member_probs
from bench.training.losses import MultiAttributeLoss

K = (7, 3, 3, 4, 6, 3)
COMMON = ["--size", "32", "--epochs", "2", "--batch-size", "16", "--pretrained", "none", "--no-progress"]
TINY = {"size": 32, "pretrained": "none"}  # DistillSpec overrides for a tiny student (as in COMMON)


def toy():
    """Two heads (2 and 3 classes), two images: student logits, teacher probabilities, labels."""
    z = [torch.tensor([[1.0, -1.0], [0.5, 0.0]]), torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])]
    teacher = torch.tensor([[0.9, 0.1, 0.2, 0.5, 0.3], [0.4, 0.6, 0.1, 0.1, 0.8]])
    labels = torch.tensor([[0, 2], [1, 1]])
    return z, teacher, labels


def by_hand(z, teacher, labels, T, alpha):
    """alpha T^2 KL(q || softmax(z/T)) + (1 - alpha) CE, per head (softmax per head), summed; numpy."""
    total = 0.0
    for head, (zi, p) in enumerate(zip(z, np.split(teacher.numpy(), [2], 1))):
        zi = zi.numpy()
        q = p ** (1 / T) / (p ** (1 / T)).sum(1, keepdims=True)
        s = np.exp(zi / T) / np.exp(zi / T).sum(1, keepdims=True)
        kl = (q * np.log(q / s)).sum(1).mean()
        prob = np.exp(zi) / np.exp(zi).sum(1, keepdims=True)
        ce = -np.log(prob[np.arange(2), labels[:, head].numpy()]).mean()
        total += alpha * T * T * kl + (1 - alpha) * ce
    return total


@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (2.0, 0.5), (4.0, 1.0), (3.0, 0.0)])
def test_kd_loss_by_hand_on_two_heads(T, alpha):
    z, teacher, labels = toy()
    loss = DistillLoss(MultiAttributeLoss([[5, 5], [3, 3, 3]]), T, alpha)
    assert loss.loss(z, labels, teacher).item() == pytest.approx(by_hand(z, teacher, labels, T, alpha), rel=1e-5)


def test_kd_term_scales_with_t_squared_alpha_zero_is_plain_and_a_matching_student_has_none():
    z, teacher, labels = toy()
    base = MultiAttributeLoss([[5, 5], [3, 3, 3]], label_smoothing=0.1)
    kd1 = DistillLoss(base, 1.0, 1.0).loss(z, labels, teacher)
    # at alpha 1 the loss is T^2 x the KL of the re-tempered distributions
    for T in (2.0, 3.0):
        kl = DistillLoss(base, T, 1.0).parts(z, labels, teacher)[0].sum()
        assert DistillLoss(base, T, 1.0).loss(z, labels, teacher).item() == pytest.approx(T * T * kl.item())
    assert kd1.item() == pytest.approx(by_hand(z, teacher, labels, 1.0, 1.0), rel=1e-5)
    assert torch.equal(DistillLoss(base, 2.0, 0.0).loss(z, labels, teacher), base(z, labels))  # alpha 0: plain
    same = torch.cat([zi.softmax(-1) for zi in z], 1)  # the teacher is the student: softmax(log p / T) = softmax(z / T)
    for T in (1.0, 2.0, 5.0):
        assert DistillLoss(base, T, 1.0).loss(z, labels, same).item() == pytest.approx(0.0, abs=1e-6)
    missing = torch.full_like(labels, -1)  # no label: the recipe's term adds nothing, the KD term stays
    half = DistillLoss(base, 2.0, 0.5)
    assert half.loss(z, missing, teacher).item() == pytest.approx(0.5 * 4 * half.parts(z, labels, teacher)[0].sum())
    assert half.loss(z, missing, teacher).item() > 0


def test_retempering_is_the_tempered_softmax_of_the_log_probabilities():
    logits = torch.randn(5, 4)
    p = logits.softmax(-1)
    for T in (0.5, 1.0, 3.0):
        q = retemper(p, T)
        assert q.sum(-1) == pytest.approx(torch.ones(5))
        assert q == pytest.approx((logits / T).softmax(-1), abs=1e-6)
        assert q == pytest.approx(p ** (1 / T) / (p ** (1 / T)).sum(-1, keepdim=True), abs=1e-6)


def test_micro_batches_take_the_steps_targets_in_order():
    z, teacher, labels = toy()
    loss = DistillLoss(MultiAttributeLoss([[5, 5], [3, 3, 3]]), 2.0, 0.5)
    loss.set_targets(teacher)
    first = loss([zi[:1] for zi in z], labels[:1])
    second = loss([zi[1:] for zi in z], labels[1:])
    assert first.item() == pytest.approx(loss.loss([zi[:1] for zi in z], labels[:1], teacher[:1]).item())
    assert second.item() == pytest.approx(loss.loss([zi[1:] for zi in z], labels[1:], teacher[1:]).item())
    with pytest.raises(RuntimeError, match="set_targets"):
        loss([zi[:1] for zi in z], labels[:1])  # the step's targets are used up


@pytest.fixture
def runs(demo_runs, tmp_path):
    out = tmp_path / "runs"
    shutil.copytree(demo_runs, out)
    return out


def test_targets_sum_to_one_per_head_and_follow_the_ensemble_weights(runs, tiny_root):
    members = load_teacher(runs, "default,b").members
    teacher = Teacher("t", "ensemble", members, np.array([0.8, 0.2]), "mean", ["plain"])
    files = sorted((tiny_root / "img").glob("*.jpg"))[:12]
    got = cached_targets(teacher, "val", files, "cpu")
    for view in ("plain", "flip"):
        for block in np.split(got[view], np.cumsum(K)[:-1], 1):
            assert block.sum(1) == pytest.approx(np.ones(len(files)), abs=1e-5)
        each = [member_probs(m, m.checkpoint("val"), files, "cpu")[view] for m in members]
        assert got[view] == pytest.approx(0.8 * each[0] + 0.2 * each[1], abs=1e-6)
        assert not np.allclose(got[view], 0.5 * each[0] + 0.5 * each[1], atol=1e-4)  # the weights matter
    geo = cached_targets(Teacher("g", "ensemble", members, np.array([0.8, 0.2]), "geometric", ["plain"]), "val",
                         files, "cpu")["plain"]
    for block in np.split(geo, np.cumsum(K)[:-1], 1):
        assert block.sum(1) == pytest.approx(np.ones(len(files)), abs=1e-5)


@pytest.mark.parametrize("combine", ["mean", "geometric"])
def test_online_and_cached_targets_agree_on_an_unaugmented_batch(runs, tiny_root, combine):
    from bench.data.images import load_images
    from bench.training.augment import to_input
    members = load_teacher(runs, "default,b").members
    teacher = Teacher("t", "ensemble", members, np.array([0.3, 0.7]), combine, ["plain"])
    files = sorted((tiny_root / "img").glob("*.jpg"))[:10]
    cached = cached_targets(teacher, "val", files, "cpu")
    x = to_input(torch.from_numpy(load_images(files, 32, members[0].meta["config"]["recipe"]["resize"],
                                              progress=False)).permute(0, 3, 1, 2))
    online = OnlineTeacher(teacher, "val", "cpu")
    assert online(x).numpy() == pytest.approx(cached["plain"], abs=1e-5)
    assert online(x.flip(3)).numpy() == pytest.approx(cached["flip"], abs=1e-5)
    assert not online(x).requires_grad and not online(x).is_inference()  # usable in the student's graph


def test_cached_targets_of_mirrored_rows_are_the_mirrored_views(runs, tiny_root, tmp_path):
    """A training step of the cached mode gives each row the teacher's target for the image the student sees:
    with mirroring the only augmentation, exactly what the online teacher says on the augmented batch. Mirrored rows
    need the `flip` targets (plain-only targets would give them the unmirrored image's)."""
    from bench.data import class_counts, open_dataset
    from bench.data.images import load_images
    from bench.distilling.distill import trainer_factory
    from bench.training.trainer import Split
    from zoo import create_model
    from zoo.recipes import RECIPES
    members = load_teacher(runs, "default,b").members
    teacher = Teacher("t", "ensemble", members, np.array([0.3, 0.7]), "mean", ["plain"])
    ds = open_dataset(tiny_root)
    files, policy = ds.files("train"), members[0].meta["config"]["recipe"]["resize"]
    recipe = RECIPES["scratch"].updated(crop_scale=1.0, rotate=0.0, jitter=0.0, hflip=True, batch_size=32,
                                        resize=policy)
    train = Split.from_numpy(load_images(files, 32, policy, progress=False), ds.splits["train"].labels, "cpu")
    val = Split.from_numpy(load_images(ds.files("val"), 32, policy, progress=False), ds.splits["val"].labels, "cpu")
    model, _ = create_model("resnet18", ds.num_classes, recipe.dropout, recipe.hidden, "none")
    make = trainer_factory(teacher, "cached", "val", files, 2.0, 0.5)
    trainer = make(model, recipe, train, val, tmp_path, class_counts(ds.splits["train"].labels, ds.num_classes),
                   seed=0, size=32, progress=False)
    given, set_targets = [], trainer.criterion.set_targets
    trainer.criterion.set_targets = lambda t, mix=None: (given.append(t), set_targets(t, mix))  # what the step gives
    idx = torch.arange(32)
    x = trainer.augment_batch(idx)
    mirror = trainer._batch[1]
    assert 0 < int(mirror.sum()) < 32  # both kinds of rows in the batch
    trainer._step(x, train.y[idx])
    cached = np.load(tmp_path / TARGETS_FILE)
    assert not np.allclose(cached["flip"][:32], cached["plain"][:32], atol=1e-3)  # the views differ
    online = OnlineTeacher(teacher, "val", "cpu")(x)
    assert given[0].numpy() == pytest.approx(online.numpy(), abs=1e-5)
    assert given[0][mirror].numpy() == pytest.approx(cached["flip"][:32][mirror.numpy()], abs=1e-6)


def history(run_dir):
    return pd.read_csv(run_dir / "history.csv").drop(columns=["train_s", "img_per_s", "epoch_s"])


@pytest.mark.parametrize("mode", ["cached", "online"])
def test_a_killed_distillation_resumes_to_the_uninterrupted_one(runs, tiny_root, mode, capsys):
    spec = lambda run: DistillSpec(teacher="default,b", student="resnet18", runs_dir=runs, run=run,  # noqa: E731
                                   mode=mode, data=tiny_root, progress=False, checkpoint_every=0,
                                   overrides={**TINY, "epochs": 2, "batch_size": 16})
    full = distill(spec("full"), "cpu")

    def kill(epoch, row):  # after epoch 1 of 2, its state saved (checkpoint_every 0)
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(spec("cut"), "cpu", on_epoch=kill)
    cut = runs / "cut" / "resnet18"
    if mode == "cached":
        stamp = (cut / TARGETS_FILE).stat().st_mtime_ns
    assert len(pd.read_csv(cut / "history.csv")) == 1
    capsys.readouterr()
    resumed = distill(spec("cut"), "cpu")
    assert f"resuming {cut} after epoch 1/2" in capsys.readouterr().out  # resumed, not started again
    pd.testing.assert_frame_equal(history(runs / "full" / "resnet18"), history(cut))
    for split in ("val", "test"):
        a, b = np.load(runs / "full/resnet18" / f"probs_{split}.npz"), np.load(cut / f"probs_{split}.npz")
        assert np.array_equal(a["plain"], b["plain"]) and np.array_equal(a["flip"], b["flip"])
    assert resumed["best_epoch"] == full["best_epoch"] and resumed["distill"]["mode"] == mode
    if mode == "cached":  # the resumed run reused the stored targets
        assert (cut / TARGETS_FILE).stat().st_mtime_ns == stamp
    else:
        assert not (cut / TARGETS_FILE).exists()


def test_student_of_an_ensemble_entry_end_to_end(runs, tiny_root, tmp_path):
    """Entry -> student, at the defaults: on the CPU the mode is views (8 stored views; the cached targets are not
    computed), its views cover exactly the training images (no val image), run.json records the teacher, the
    leaderboard row says where it comes from, and bench.ensemble fits its decision rule."""
    from bench.distill import main as distill_main
    from bench.distilling.views import VIEWS_FILE
    from bench.ensemble import main as ensemble_main
    meta_b = json.loads((runs / "b/resnet18/run.json").read_text())
    meta_b["from_study"] = "s1"  # a member whose parameters were chosen on val
    (runs / "b/resnet18/run.json").write_text(json.dumps(meta_b))
    ensemble_main(["--runs-dir", str(runs), "--out", str(tmp_path / "sub"), "--name", "ens", "--no-report"])
    meta = distill_main(["--teacher", "ens", "--student", "resnet18", "--out", str(runs), "--data", str(tiny_root),
                         *COMMON])
    student = runs / "distill-ens" / "resnet18"
    d = meta["distill"]
    assert d["teacher"] == "ens" and d["mode"] == "views" and d["temperature"] == 2.0 and d["alpha"] == 0.5
    assert d["views"]["count"] == 8 and d["views"]["mixup"] is None and not (student / TARGETS_FILE).exists()
    assert [m["label"] for m in d["teacher_detail"]["members"]] == ["b/resnet18", "default/resnet18"]
    assert d["teacher_detail"]["members_selected_on_val"] == ["b/resnet18"]
    assert d["labelled_by_teacher"] == {"train": 120, "unlabelled": 0, "val": 0}
    with np.load(student / VIEWS_FILE) as z:
        files = [str(f) for f in z["files"]]
        assert z["probs"].shape[:2] == (8, 120)
    from bench.data import open_dataset
    ds = open_dataset(tiny_root)
    assert files == [str(f) for f in ds.files("train")]
    assert not set(files) & {str(f) for f in ds.files("val")}  # no val image's target reaches the student
    board = pd.read_csv(tmp_path / "reports" / "leaderboard.csv")  # a folder named runs reports beside it
    row = board[board["entry"] == "distill-ens/resnet18"].iloc[0]
    assert "distilled from `ens` (views: 8 stored views, T 2, alpha 0.5)" in row["val_scoring"]
    assert "teacher members selected on val: b/resnet18 (the student inherits that optimism)" in row["val_scoring"]
    result = ensemble_main(["--runs-dir", str(runs), "--runs", "distill-ens", "--metric", "class", "--name", "one",
                            "--out", str(tmp_path / "sub1"), "--no-report"])
    assert result["members"] == ["distill-ens/resnet18"] and result["decision"] == "logit_adjusted"
    assert len(result["decision_params"]["tau"]) == 6
    assert (tmp_path / "sub1" / "prediction.txt").exists()


def test_a_teacher_with_a_retrained_member_is_refused_naming_it(runs, tiny_root, tmp_path, capsys):
    from bench.distill import main as distill_main
    from bench.ensemble import main as ensemble_main
    from bench.run import main as run_main
    ensemble_main(["--runs-dir", str(runs), "--out", str(tmp_path / "sub"), "--name", "ens", "--no-report"])
    run_main(["--models", "resnet18", "--run", "b", "--label-smoothing", "0", "--lr", "3e-3", "--seed", "1",
              "--data", str(tiny_root), "--out", str(runs), "--no-report", "--force", *COMMON])
    with pytest.raises(SystemExit) as e:
        distill_main(["--teacher", "ens", "--student", "resnet18", "--out", str(runs), "--data", str(tiny_root),
                      "--no-report", *COMMON])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "b/resnet18" in err and "retrained" in err and "default/resnet18 (" not in err
    assert not (runs / "distill-ens").exists()


def test_unlabelled_images_join_the_training_split_with_missing_labels(runs, tiny_root, tmp_path):
    spec = DistillSpec(teacher="default,b", student="resnet18", runs_dir=runs, data=tiny_root, unlabelled="test",
                       overrides=TINY)
    teacher, mode, ds, info = prepare(spec, "cpu")[:4]
    tr = ds.splits["train"]
    assert info == {"source": "test", "transductive": True, "test_images": 30, "images": 30} and len(tr) == 150
    assert (tr.labels[120:] == -1).all() and (tr.labels[:120] >= 0).all()
    assert ds.fingerprint() == teacher.dataset  # ranks and ensembles with the runs of its dataset
    from bench.distilling.distill import provenance
    assert "--unlabelled test (30 images labelled by the teacher, transductive: the test split)" in \
        provenance(teacher, mode, 2.0, 0.5, info)
    listed = tmp_path / "more.txt"
    val_image = tiny_root / open(tiny_root / "split/val.txt").readline().strip()
    listed.write_text(f"{val_image}\n")
    from bench.data import DatasetError
    with pytest.raises(DatasetError, match="already in the val split"):
        prepare(DistillSpec(teacher="default,b", student="resnet18", runs_dir=runs, data=tiny_root,
                            unlabelled=str(listed)), "cpu")


def test_test_split_images_are_transductive_however_they_are_named(runs, tiny_root, tmp_path):
    """Only `--unlabelled test` was marked transductive: a list file or a folder holding test-split images was not.
    The images decide (their resolved paths against the test split's), and run.json and the leaderboard row say
    how many came from the test split."""
    from bench.data import open_dataset
    from bench.distill import main as distill_main
    from bench.distilling.distill import provenance
    test = open_dataset(tiny_root, check_images=False).files("test")
    outside = tmp_path / "outside"
    outside.mkdir()
    for i in range(2):  # images of no split: copies under other names
        shutil.copy(test[i], outside / f"new{i}.jpg")
    listed = tmp_path / "lists" / "more.txt"
    listed.parent.mkdir()
    listed.write_text("".join(f"../outside/new{i}.jpg\n" for i in range(2)) +  # relative to the list file
                      "".join(f"{f}\n" for f in test[:3]))
    linked = tmp_path / "linked"  # a folder whose files are links to test images
    linked.mkdir()
    for f in test[3:7]:
        (linked / f.name).symlink_to(f)

    def info_of(source):
        spec = DistillSpec(teacher="default,b", student="resnet18", runs_dir=runs, data=tiny_root,
                           unlabelled=str(source), overrides=TINY)
        teacher, mode, _, info = prepare(spec, "cpu")[:4]
        return info, provenance(teacher, mode, 2.0, 0.5, info)

    info, note = info_of(listed)
    assert (info["kind"], info["transductive"], info["test_images"], info["images"]) == ("list file", True, 3, 5)
    assert note.endswith(f"--unlabelled {listed} (5 images labelled by the teacher, transductive: 3 of them from "
                         f"the test split)")
    info, note = info_of(linked)
    assert (info["kind"], info["transductive"], info["test_images"], info["images"]) == ("folder", True, 4, 4)
    assert "transductive: 4 of them from the test split" in note
    info, note = info_of(outside)
    assert (info["transductive"], info["test_images"], info["images"]) == (False, 0, 2)
    assert note.endswith(f"--unlabelled {outside} (2 images labelled by the teacher)")
    # the student's run.json and its leaderboard row follow
    meta = distill_main(["--teacher", "default,b", "--student", "resnet18", "--run", "kd-list", "--unlabelled",
                         str(listed), "--out", str(runs), "--data", str(tiny_root), *COMMON[:2], "--epochs", "1",
                         *COMMON[4:]])
    d = meta["distill"]
    assert d["unlabelled"]["transductive"] is True and d["unlabelled"]["test_images"] == 3
    assert d["labelled_by_teacher"]["unlabelled"] == 5
    assert read_run(runs / "kd-list" / "resnet18").meta["distill"]["unlabelled"] == d["unlabelled"]
    board = pd.read_csv(tmp_path / "reports" / "leaderboard.csv")
    row = board[board["entry"] == "kd-list/resnet18"].iloc[0]
    assert "transductive: 3 of them from the test split" in row["val_scoring"]


@pytest.mark.parametrize("mode", ["cached", "views"])
def test_refit_distils_again_on_train_and_val_and_writes_the_students_test_probabilities(runs, tiny_root, mode):
    """--refit: the val run's targets (cached) or labelled views cover train only; the refit's cover train + val
    (its teacher labels the val images too); the student's test probabilities become the refit model's, the val
    run's are kept aside."""
    from bench.data import open_dataset
    from bench.distill import main as distill_main
    from bench.distilling.views import VIEWS_FILE
    meta = distill_main(["--teacher", "default,b", "--student", "resnet18", "--run", f"kd-refit-{mode}", "--refit",
                         "--mode", mode, "--out", str(runs), "--data", str(tiny_root), "--no-report", *COMMON])
    student = runs / f"kd-refit-{mode}" / "resnet18"
    ds = open_dataset(tiny_root)
    train, val = [str(f) for f in ds.files("train")], [str(f) for f in ds.files("val")]
    stored = TARGETS_FILE if mode == "cached" else VIEWS_FILE
    with np.load(student / stored) as z:
        assert [str(f) for f in z["files"]] == train  # the val run: no val image's target
    with np.load(student / "refit" / stored) as z:
        assert [str(f) for f in z["files"]] == train + val
        if mode == "views":  # every view of every pooled image labelled
            assert z["probs"].shape[:2] == (8, len(train + val))
    assert meta["distill"]["mode"] == mode
    with np.load(student / "refit" / "probs_test.npz") as r, np.load(student / "probs_test.npz") as s, \
            np.load(student / "probs_test_valrun.npz") as v:
        np.testing.assert_array_equal(s["plain"], r["plain"])
        assert not np.array_equal(s["plain"], v["plain"])
    assert meta["distill"]["refit"] is True and meta["distill"]["refit_teacher"]["members"]
    from bench.metrics import probs_to_pred, score
    with np.load(student / "probs_val.npz") as z:  # the val statistics stay the val run's (refit trained on val)
        expected = score(z["labels"], probs_to_pred(z["plain"], K), K)["overall_acc"]
    last = pd.read_csv(student / "history.csv").iloc[-1]  # the val run's last epoch (the recipe keeps its last)
    assert meta["val"]["overall_acc"] == pytest.approx(expected) == pytest.approx(last["overall_acc"])


# --- issue 37: out-of-fold targets, --init, stream, bad input ---------------------------------------------------------

@pytest.fixture(scope="module")
def crossfit_runs(demo_runs, tiny_root, tmp_path_factory):
    """The demo runs plus three members cross-fitted over train (bench.run --folds 2 --pool train): cf and cf2 on
    the same folds (fold seed 0), cfs on other folds (fold seed 1)."""
    from bench.run import main as run_main
    out = tmp_path_factory.mktemp("cf") / "runs"
    shutil.copytree(demo_runs, out)
    common = ["--models", "resnet18", "--folds", "2", "--pool", "train", "--data", str(tiny_root), "--out", str(out),
              "--size", "32", "--epochs", "1", "--batch-size", "16", "--pretrained", "none", "--no-progress",
              "--no-report"]
    run_main([*common, "--run", "cf"])
    run_main([*common, "--run", "cf2", "--seed", "1", "--lr", "0.03"])
    run_main([*common, "--run", "cfs", "--fold-seed", "1"])
    return out


@pytest.fixture
def cf_runs(crossfit_runs, tmp_path):
    out = tmp_path / "runs"
    shutil.copytree(crossfit_runs, out)
    return out


def fold_model_probs(member_dir, fold, files):
    """Plain probabilities of `files` by fold `fold`'s model of a cross-fitted member, computed here."""
    from bench.data.images import load_images
    from bench.ensembling.tta import load_trained
    d = member_dir / f"fold-{fold}"
    meta = read_run(d).meta
    x = torch.from_numpy(load_images(files, 32, meta["config"]["recipe"]["resize"], progress=False))
    with torch.no_grad():
        return torch.cat([p.softmax(1) for p in load_trained(meta, d / "best.pt")(x.permute(0, 3, 1, 2).float())],
                         1).numpy()


def test_out_of_fold_targets_come_from_the_fold_model_that_never_saw_each_image(crossfit_runs, tiny_root):
    """A cross-fitted teacher's cached target for a training image is its members' out-of-fold probability: fold
    f's model for the images of fold f, a model that trained on the other fold only; an image outside train (here
    the test split, as --unlabelled test brings it) gets the mean of the fold models. The online teacher gives
    every row of a batch the same networks."""
    from bench.artifacts import load_npz
    from bench.data import class_counts, open_dataset
    from bench.distilling.teacher import OUT_OF_FOLD, member_targets
    ds = open_dataset(tiny_root)
    teacher = load_teacher(crossfit_runs, "cf,cf2")
    teacher.root = ds.root
    assert teacher.targets == OUT_OF_FOLD and load_teacher(crossfit_runs, "default,b").targets == "in-sample"
    files = ds.files("train")
    got = cached_targets(teacher, "val", files, "cpu")
    each = []
    for run in ("cf", "cf2"):
        d = crossfit_runs / run / "resnet18"
        fold = load_npz(d / "probs_train_oof.npz")["fold"]
        mine = np.zeros_like(got["plain"])
        for f in (0, 1):
            counts = read_run(d / f"fold-{f}").meta["train_class_counts"]
            assert counts == [c.tolist() for c in class_counts(ds.splits["train"].labels[fold != f], K)]
            rows = np.flatnonzero(fold == f)
            mine[rows] = fold_model_probs(d, f, [files[i] for i in rows])
        each.append(mine)
    assert got["plain"] == pytest.approx((each[0] + each[1]) / 2, abs=1e-4)
    test = ds.files("test")
    outside = member_targets(teacher.members[0], "val", test, "cpu", root=ds.root)["plain"]
    d = crossfit_runs / "cf" / "resnet18"
    assert outside == pytest.approx((fold_model_probs(d, 0, test) + fold_model_probs(d, 1, test)) / 2, abs=1e-4)
    assert outside == pytest.approx(load_npz(d / "probs_test.npz")["plain"], abs=1e-5)  # its test prediction
    from bench.data.images import load_images
    from bench.training.augment import to_input
    online = OnlineTeacher(teacher, "val", "cpu", files)
    idx = torch.randperm(len(files), generator=torch.Generator().manual_seed(0))[:24]
    x = to_input(torch.from_numpy(load_images([files[i] for i in idx], 32, "stretch", progress=False))
                 .permute(0, 3, 1, 2))
    assert online(x, idx).numpy() == pytest.approx(got["plain"][idx.numpy()], abs=1e-4)


def test_a_student_of_cross_fitted_members_is_labelled_out_of_fold(cf_runs, tiny_root, tmp_path):
    """The student's cached targets are its members' stored out-of-fold probabilities combined; run.json and the
    leaderboard row say `targets out-of-fold`, a student of ordinary members `targets in-sample`."""
    from bench.artifacts import load_npz
    from bench.distill import main as distill_main
    meta = distill_main(["--teacher", "cf,cf2", "--student", "resnet18", "--run", "oof", "--mode", "cached",
                         "--out", str(cf_runs), "--data", str(tiny_root), *COMMON[:2], "--epochs", "1", *COMMON[4:]])
    assert meta["distill"]["targets"] == "out-of-fold" and meta["distill"]["in_sample_note"] is None
    assert meta["distill"]["provenance"] == "distilled from `cf,cf2` (cached, T 2, alpha 0.5); targets out-of-fold"
    stored = [load_npz(cf_runs / run / "resnet18" / "probs_train_oof.npz") for run in ("cf", "cf2")]
    with np.load(cf_runs / "oof" / "resnet18" / TARGETS_FILE) as z:
        for view in ("plain", "flip"):
            assert z[view] == pytest.approx((stored[0][view] + stored[1][view]) / 2, abs=1e-6)
    insample = distill_main(["--teacher", "default,b", "--student", "resnet18", "--run", "ins", "--mode", "cached",
                             "--out", str(cf_runs), "--data", str(tiny_root), *COMMON[:2], "--epochs", "1",
                             *COMMON[4:]])
    assert insample["distill"]["targets"] == "in-sample"
    board = pd.read_csv(tmp_path / "reports" / "leaderboard.csv")
    rows = board.set_index("entry")["val_scoring"]
    assert "distilled from `cf,cf2` (cached, T 2, alpha 0.5); targets out-of-fold" in rows["oof/resnet18"]
    assert "distilled from `default,b` (cached, T 2, alpha 0.5); targets in-sample" in rows["ins/resnet18"]


def test_auto_mode_is_views_on_the_cpu_and_online_on_cuda():
    """The mode `auto` resolves to (prepare, before anything is written): views where the teacher's passes are
    dear (measured better than cached targets on the CPU: reports/reference/distill.md), online on CUDA; --views is
    refused where auto means online."""
    from bench.distilling.distill import ViewsSettings, auto_mode, check_views
    assert [auto_mode(d) for d in ("cpu", torch.device("cpu"), "cuda", "cuda:1", torch.device("cuda", 0))] == \
        ["views", "views", "online", "online", "online"]
    spec = DistillSpec(teacher="t", student="s", views=3)
    assert check_views(spec, auto_mode("cpu")) == ViewsSettings(3, None, 0)
    with pytest.raises(ValueError, match="--views 3: only in the views mode .* the mode here is online"):
        check_views(spec, auto_mode("cuda"))


@pytest.mark.parametrize("args,message", [
    (["--teacher", "cf,default"], "teacher cf,default mixes in-sample and out-of-fold training targets: "
                                  "cf/resnet18 cross-fitted over train"),
    (["--teacher", "cf,cfs"], "split train into different folds (K 2, --fold-seed 0"),
    (["--teacher", "default,b", "--mode", "views", "--views", "0"], "--views 0: must be at least 1"),
    (["--teacher", "default,b", "--mode", "cached", "--views", "2"], "--views 2: only in the views mode"),
    (["--teacher", "default,b", "--mode", "online", "--mixup", "0.2"], "--mixup 0.2: only in the views mode"),
    (["--teacher", "default,b", "--init", "x/resnet18"], "--init x/resnet18: no finished run there"),
    (["--teacher", "default,b", "--student", "resnet34", "--init", "default/resnet18"],
     "--init default/resnet18: its network is resnet18, the student is resnet34"),
    (["--teacher", "default,b", "--init", "renamed/resnet18"],
     "--init renamed/resnet18: class names of attribute texture"),
    (["--teacher", "default,b", "--init", "fewer/resnet18"], "--init fewer/resnet18: classes per attribute"),
])
def test_bad_teachers_views_and_inits_exit_2_and_write_nothing(cf_runs, tiny_root, capsys, args, message):
    from bench.distill import main as distill_main
    for name, change in (("renamed", lambda m: m["class_names"][0].__setitem__(0, "plaid")),
                         ("fewer", lambda m: m.__setitem__("num_classes", [6, *m["num_classes"][1:]]))):
        shutil.copytree(cf_runs / "default", cf_runs / name)  # a run of other classes
        meta = json.loads((cf_runs / name / "resnet18/run.json").read_text())
        change(meta)
        (cf_runs / name / "resnet18/run.json").write_text(json.dumps(meta))
    before = sorted(p.name for p in cf_runs.iterdir())
    student = args[args.index("--student") + 1] if "--student" in args else "resnet18"
    with pytest.raises(SystemExit) as e:
        distill_main([*args, *([] if "--student" in args else ["--student", "resnet18"]), "--run", "bad",
                      "--out", str(cf_runs), "--data", str(tiny_root), *COMMON])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err, err
    assert err.count("error:") == 1 and sorted(p.name for p in cf_runs.iterdir()) == before  # nothing written
    assert not (cf_runs / "bad" / student).exists()


def test_init_starts_the_student_from_a_runs_weights_or_an_exported_file(runs, tiny_root, tmp_path):
    """--init RUN/MODEL or FILE.safetensors: the student's first step starts from exactly those weights (the
    run's best.pt, read by the safe loader), and run.json, its config and the leaderboard row record where."""
    from bench import checkpoints
    from bench.data import class_counts, open_dataset
    from bench.data.images import load_images
    from bench.distill import main as distill_main
    from bench.distilling.distill import trainer_factory
    from bench.export import main as export_main
    from bench.training.trainer import Split
    from zoo import create_model
    from zoo.recipes import RECIPES
    exported = tmp_path / "b.safetensors"
    export_main(["--runs-dir", str(runs), "--model", "b/resnet18", "--format", "safetensors", "--out", str(exported)])
    ds = open_dataset(tiny_root)
    teacher = load_teacher(runs, "default,b")
    recipe = RECIPES["scratch"].updated(batch_size=16, resize="stretch")
    train = Split.from_numpy(load_images(ds.files("train"), 32, "stretch", progress=False),
                             ds.splits["train"].labels, "cpu")
    val = Split.from_numpy(load_images(ds.files("val"), 32, "stretch", progress=False), ds.splits["val"].labels,
                           "cpu")
    for n, (source, weights) in enumerate((("default/resnet18", runs / "default/resnet18/best.pt"),
                                           (str(exported), runs / "b/resnet18/best.pt"))):
        (tmp_path / f"s{n}").mkdir()
        init = prepare(DistillSpec(teacher="default,b", student="resnet18", runs_dir=runs, data=tiny_root,
                                   init=source, overrides=TINY), "cpu").init
        model, _ = create_model("resnet18", ds.num_classes, 0.0, 0, "none")
        make = trainer_factory(teacher, "cached", "val", ds.files("train"), 2.0, 0.5, init=init)
        trainer = make(model, recipe, train, val, tmp_path / f"s{n}",
                       class_counts(ds.splits["train"].labels, ds.num_classes), seed=0, size=32, progress=False)
        want = checkpoints.load(weights)["model"]
        got = trainer.model.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), source
    meta = distill_main(["--teacher", "default,b", "--student", "resnet18", "--run", "kd-init", "--init",
                         "default/resnet18", "--out", str(runs), "--data", str(tiny_root), *COMMON[:2], "--epochs",
                         "1", *COMMON[4:]])
    assert meta["init"]["init"] == "run" and meta["init"]["source"] == "default/resnet18"
    assert meta["config"]["distill"]["init"]["sha256"] == read_run(runs / "default/resnet18").meta["files"][
        "best.pt"]["sha256"]
    assert meta["distill"]["provenance"].endswith("; student initialised from `default/resnet18`")
    board = pd.read_csv(tmp_path / "reports" / "leaderboard.csv")
    row = board[board["entry"] == "kd-init/resnet18"].iloc[0]
    assert "student initialised from `default/resnet18`" in row["val_scoring"] and row["init"] == "run"


def data_mode_spec(runs, root, run, data_mode, epochs, **kw) -> DistillSpec:
    """A tiny student of the teacher `default,b` at `data_mode` (the data-mode tests' common settings)."""
    return DistillSpec(teacher="default,b", student="resnet18", runs_dir=runs, run=run, data=root, progress=False,
                       data_mode=data_mode, overrides={**TINY, "epochs": epochs, "batch_size": 16}, **kw)


def test_cached_targets_honour_the_stream_data_mode(runs, tiny_root, monkeypatch):
    """--data-mode stream: the teacher's images are read from the memory-mapped decode cache batch by batch (they
    were decoded into memory whatever the mode), and the targets are the resident mode's."""
    import bench.distilling.teacher as teacher_module
    calls, load = [], teacher_module.load_images

    def recording(files, size, policy, **kw):
        calls.append(kw.get("mmap", False))
        return load(files, size, policy, **kw)

    monkeypatch.setattr(teacher_module, "load_images", recording)
    spec = lambda run, dm: data_mode_spec(runs, tiny_root, run, dm, epochs=1, mode="cached")  # noqa: E731
    meta = distill(spec("streamed", "stream"), "cpu")
    assert meta["data_mode"]["mode"] == "stream" and calls == [True, True]  # one decode per member, memory-mapped
    calls.clear()
    distill(spec("resident", "resident"), "cpu")
    assert calls == [False, False]
    with np.load(runs / "streamed/resnet18" / TARGETS_FILE) as s, \
            np.load(runs / "resident/resnet18" / TARGETS_FILE) as r:
        for view in ("plain", "flip"):
            assert s[view] == pytest.approx(r[view], abs=1e-6)


def test_views_mode_under_the_stream_data_mode_labels_and_trains_as_the_resident_mode(runs, tiny_root):
    """--mode views with --data-mode stream: the views are rendered from the memory-mapped training images
    (MappedImages, mixup partners gathered by row), so the teacher's stored probabilities, the views' parameters and
    the student trained on them equal the resident mode's."""
    from bench.distilling.views import VIEWS_FILE
    spec = lambda run, dm: data_mode_spec(runs, tiny_root, run, dm, epochs=2, mode="views", views=2,  # noqa: E731
                                          mixup=0.4)
    streamed = distill(spec("v-streamed", "stream"), "cpu")
    resident = distill(spec("v-resident", "resident"), "cpu")
    assert streamed["data_mode"]["mode"] == "stream" and resident["data_mode"]["mode"] == "resident"
    with np.load(runs / "v-streamed/resnet18" / VIEWS_FILE) as s, \
            np.load(runs / "v-resident/resnet18" / VIEWS_FILE) as r:
        assert sorted(s.files) == sorted(r.files)
        for k in s.files:
            assert s[k].shape == r[k].shape and np.array_equal(s[k], r[k]), k
    with np.load(runs / "v-streamed/resnet18/probs_val.npz") as s, \
            np.load(runs / "v-resident/resnet18/probs_val.npz") as r:
        assert s["plain"] == pytest.approx(r["plain"], abs=1e-5)
