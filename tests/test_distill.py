"""bench.distill: the per-head KD loss, the teacher's targets (cached and online), honesty checks, resume."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from bench.artifacts import read_run
from bench.distilling.distill import TARGETS_FILE, DistillSpec, distill, prepare
from bench.distilling.kd import DistillLoss, retemper
from bench.distilling.teacher import OnlineTeacher, Teacher, cached_targets, load_teacher, member_probs
from bench.training.losses import MultiAttributeLoss

K = (7, 3, 3, 4, 6, 3)
COMMON = ["--size", "32", "--epochs", "2", "--batch-size", "16", "--pretrained", "none", "--no-progress"]


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


def history(run_dir):
    return pd.read_csv(run_dir / "history.csv").drop(columns=["train_s", "img_per_s", "epoch_s"])


@pytest.mark.parametrize("mode", ["cached", "online"])
def test_a_killed_distillation_resumes_to_the_uninterrupted_one(runs, tiny_root, mode, capsys):
    spec = lambda run: DistillSpec(teacher="default,b", student="resnet18", runs_dir=runs, run=run,  # noqa: E731
                                   mode=mode, data=tiny_root, progress=False, checkpoint_every=0,
                                   overrides={"size": 32, "epochs": 2, "batch_size": 16, "pretrained": "none"})
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
    """Entry -> student: its targets cover exactly the training images (no val image), run.json records the
    teacher, the leaderboard row says where it comes from, and bench.ensemble fits its decision rule."""
    from bench.distill import main as distill_main
    from bench.ensemble import main as ensemble_main
    meta_b = json.loads((runs / "b/resnet18/run.json").read_text())
    meta_b["from_study"] = "s1"  # a member whose parameters were chosen on val
    (runs / "b/resnet18/run.json").write_text(json.dumps(meta_b))
    ensemble_main(["--runs-dir", str(runs), "--out", str(tmp_path / "sub"), "--name", "ens", "--no-report"])
    meta = distill_main(["--teacher", "ens", "--student", "resnet18", "--out", str(runs), "--data", str(tiny_root),
                         *COMMON])
    student = runs / "distill-ens" / "resnet18"
    d = meta["distill"]
    assert d["teacher"] == "ens" and d["mode"] == "cached" and d["temperature"] == 2.0 and d["alpha"] == 0.5
    assert [m["label"] for m in d["teacher_detail"]["members"]] == ["b/resnet18", "default/resnet18"]
    assert d["teacher_detail"]["members_selected_on_val"] == ["b/resnet18"]
    assert d["labelled_by_teacher"] == {"train": 120, "unlabelled": 0, "val": 0}
    with np.load(student / TARGETS_FILE) as z:
        files = [str(f) for f in z["files"]]
    from bench.data import open_dataset
    ds = open_dataset(tiny_root)
    assert files == [str(f) for f in ds.files("train")]
    assert not set(files) & {str(f) for f in ds.files("val")}  # no val image's target reaches the student
    board = pd.read_csv(tmp_path / "reports" / "leaderboard.csv")  # a folder named runs reports beside it
    row = board[board["entry"] == "distill-ens/resnet18"].iloc[0]
    assert "distilled from `ens` (cached, T 2, alpha 0.5)" in row["val_scoring"]
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
                       overrides={"size": 32, "pretrained": "none"})
    teacher, mode, ds, info, _, _ = prepare(spec, "cpu")
    tr = ds.splits["train"]
    assert info == {"source": "test", "transductive": True, "images": 30} and len(tr) == 150
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


def test_refit_distils_again_on_train_and_val_and_writes_the_students_test_probabilities(runs, tiny_root):
    """--refit: the val run's targets cover train only; the refit's cover train + val (its teacher labels the val
    images too); the student's test probabilities become the refit model's, the val run's are kept aside."""
    from bench.data import open_dataset
    from bench.distill import main as distill_main
    meta = distill_main(["--teacher", "default,b", "--student", "resnet18", "--run", "kd-refit", "--refit",
                         "--out", str(runs), "--data", str(tiny_root), "--no-report", *COMMON])
    student = runs / "kd-refit" / "resnet18"
    ds = open_dataset(tiny_root)
    train, val = [str(f) for f in ds.files("train")], [str(f) for f in ds.files("val")]
    with np.load(student / TARGETS_FILE) as z:
        assert [str(f) for f in z["files"]] == train  # the val run: no val image's target
    with np.load(student / "refit" / TARGETS_FILE) as z:
        assert [str(f) for f in z["files"]] == train + val
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
