"""bench.distill --mode views (issue 37): replayable augmentation, the teacher labelling exactly the pixels the student
trains on, epoch e on view e mod V, mixup's loss, and a views student that resumes."""
import shutil

import numpy as np
import pytest
import torch

from bench.training.augment import AugParams, apply_params, augment, draw_params

K = (7, 3, 3, 4, 6, 3)
SETTINGS = [
    dict(),                                                               # crop + rotation (warp), flip, jitter
    dict(crop_scale=1.0, rotate=0.0),                                     # no warp: the image or its mirror
    dict(rotate=0.0, crop_ratio=1.0, crop_sampling="side", antialias=True, out_size=32),  # whole-pixel crops
    dict(jitter=0.0, out_size=32),
    dict(hflip=False, crop_scale=1.0, rotate=5.0),
]


@pytest.mark.parametrize("kw", SETTINGS)
def test_drawn_then_applied_parameters_are_the_trainers_augmentation(kw):
    """augment = apply_params(draw_params): the same pixels and mirrors bit for bit, the same draws (the generator
    ends in the same state), so the trainer's numbers do not move; and a view depends on its own row alone: the
    rows of a batch rendered in another order (the same batch shape) are the same pixels."""
    x = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    want, mirror = augment(x, g1, return_mirror=True, **kw)
    args = {k: v for k, v in kw.items()}
    p = draw_params(16, 40, g2, "cpu", **args)
    got, got_mirror = apply_params(x, p)
    assert torch.equal(got, want) and torch.equal(got_mirror, mirror)
    assert torch.equal(g1.get_state(), g2.get_state())
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    again, _ = apply_params(x[perm], p.rows(perm))
    assert torch.equal(again, want[perm])


def test_params_round_trip_through_their_stored_form(tmp_path):
    """What save_views writes, read_views gives back: the same parameters, so the replay is the same views."""
    from types import SimpleNamespace

    from bench.distilling.views import draw_views, read_views, save_views
    recipe = SimpleNamespace(crop_scale=0.35, hflip=True, rotate=10.0, jitter=0.2, crop_ratio=4 / 3,
                             crop_sampling="area", crop_antialias=False)
    views = draw_views(10, 40, recipe, 32, 3, seed=5, alpha=0.4)
    views.probs = torch.rand(3, 10, sum(K)).to(torch.float16)
    save_views(tmp_path / "v.npz", views, "k", [tmp_path / f"{i}.jpg" for i in range(10)], 5, 0.4)
    key, back = read_views(tmp_path / "v.npz")
    assert key == "k" and back.count == 3 and torch.equal(back.probs, views.probs)
    assert torch.equal(back.partner, views.partner) and torch.equal(back.lam, views.lam)
    assert bool((views.partner != torch.arange(10)).all())  # a partner is always another image
    x = torch.randint(0, 256, (10, 3, 40, 40), dtype=torch.uint8)
    for v in range(3):
        for name in AugParams.TENSORS:
            assert torch.equal(getattr(back.params[v], name), getattr(views.params[v], name)), name
        idx = torch.arange(10)
        assert torch.equal(back.render(x, idx, v, x)[0], views.render(x, idx, v, x)[0])
    # view v is drawn from (seed, v) alone: more views keep the first ones
    more = draw_views(10, 40, recipe, 32, 5, seed=5, alpha=0.4)
    assert torch.equal(more.params[2].sx, views.params[2].sx) and torch.equal(more.lam[:3], views.lam)
    with pytest.raises(ValueError, match="--views 0: must be at least 1"):
        draw_views(10, 40, recipe, 32, 0, seed=5, alpha=None)


@pytest.fixture
def runs(demo_runs, tmp_path):
    out = tmp_path / "runs"
    shutil.copytree(demo_runs, out)
    return out


def views_trainer(runs, tiny_root, run_dir, seen=None, monkeypatch=None, count=3, mixup=0.4):
    """A views-mode DistillTrainer of teacher default,b on the tiny train split at 32 px; `seen` collects every
    (view batch, rows) the teacher is shown while it labels the views."""
    from bench.data import class_counts, open_dataset
    from bench.data.images import load_images
    from bench.distilling.distill import ViewsSettings, trainer_factory
    from bench.distilling.teacher import OnlineTeacher, load_teacher
    from bench.training.trainer import Split
    from zoo import create_model
    from zoo.recipes import RECIPES
    teacher = load_teacher(runs, "default,b")
    ds = open_dataset(tiny_root)
    teacher.root = ds.root
    if seen is not None:
        call = OnlineTeacher.__call__
        monkeypatch.setattr(OnlineTeacher, "__call__",
                            lambda self, x, idx=None: (seen.append((x.clone(), idx.clone())), call(self, x, idx))[1])
    recipe = RECIPES["scratch"].updated(batch_size=16, resize="stretch", rotate=10.0, jitter=0.2)
    train = Split.from_numpy(load_images(ds.files("train"), 36, "stretch", progress=False),
                             ds.splits["train"].labels, "cpu")  # decoded larger than the input: crops scale down
    val = Split.from_numpy(load_images(ds.files("val"), 32, "stretch", progress=False), ds.splits["val"].labels,
                           "cpu")
    model, _ = create_model("resnet18", ds.num_classes, 0.0, 0, "none")
    make = trainer_factory(teacher, "views", "val", ds.files("train"), 2.0, 0.5, ViewsSettings(count, mixup, 0))
    run_dir.mkdir(parents=True, exist_ok=True)
    return teacher, make(model, recipe, train, val, run_dir, class_counts(ds.splits["train"].labels, ds.num_classes),
                         seed=0, size=32, progress=False)


def test_the_student_trains_on_exactly_the_views_the_teacher_labelled(runs, tiny_root, tmp_path, monkeypatch):
    """Epoch e's batch is view e mod V of its rows, pixel for pixel the images the teacher was shown when it
    labelled that view (mixup partners included); the loss gets the stored probabilities of those rows in that view
    (what the teacher says of the student's batch, to float16), the partners' labels and lam."""
    from bench.distilling.teacher import OnlineTeacher
    from bench.distilling.views import VIEWS_FILE
    seen = []
    teacher, trainer = views_trainer(runs, tiny_root, tmp_path / "s", seen, monkeypatch)
    views = trainer.views
    assert views.count == 3 and (tmp_path / "s" / VIEWS_FILE).stat().st_size < 200_000
    assert len(seen) == 3 * 8 and all(len(x) == 16 for x, _ in seen)  # 120 rows in batches of 16, last one padded
    shown = {}
    for b, (x, idx) in enumerate(seen):
        for row, image in zip(idx.tolist()[:min(16, 120 - 16 * (b % 8))], x):
            shown[(b // 8, row)] = image
    given = []
    set_targets = trainer.criterion.set_targets
    trainer.criterion.set_targets = lambda t, mix=None: (given.append((t, mix)), set_targets(t, mix))
    online = OnlineTeacher(teacher, "val", "cpu", trainer_files(tiny_root))
    batches = {}
    for epoch in (0, 1, 3, 4):
        trainer.epoch = epoch
        idx = torch.randperm(120, generator=torch.Generator().manual_seed(epoch))[:16]
        x = trainer.augment_batch(idx)
        v = epoch % 3
        for k, row in enumerate(idx.tolist()):
            assert torch.equal(x[k], shown[(v, row)]), (epoch, row)
        trainer._step(x, trainer.train.y[idx])
        t, (partner_labels, lam) = given[-1]
        assert torch.equal(t, views.probs[v][idx].float())
        assert t.numpy() == pytest.approx(online(x, idx).numpy(), abs=2e-3)  # float16 of the teacher's own answer
        assert torch.equal(partner_labels, trainer.train.y[views.partner[v][idx]])
        assert torch.equal(lam, views.lam[v][idx])
        batches[epoch] = (idx, x)
    trainer.epoch = 3  # view 0 again
    assert torch.equal(trainer.augment_batch(batches[0][0]), batches[0][1])
    trainer.epoch = 1
    assert not torch.equal(trainer.augment_batch(batches[0][0]), batches[0][1])  # another view


def trainer_files(root):
    from bench.data import open_dataset
    return open_dataset(root).files("train")


def test_mixup_loss_is_the_lam_weighted_loss_of_both_labels_by_hand():
    from bench.distilling.kd import DistillLoss, mixed_per_attribute
    from bench.training.losses import MultiAttributeLoss
    z = [torch.tensor([[1.0, -1.0], [0.5, 0.0], [0.2, 0.3]]),
         torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.1, 0.2, 0.3]])]
    y = torch.tensor([[0, 2], [1, -1], [1, 0]])
    y2 = torch.tensor([[1, 1], [0, 0], [-1, 2]])
    lam = torch.tensor([0.25, 0.5, 0.9])
    base = MultiAttributeLoss([[5, 5], [3, 3, 3]])

    def ce(zi, t):
        return -float(torch.log_softmax(zi, -1)[t])

    want = []
    for h in range(2):
        num = den = 0.0
        for r in range(3):
            for labels, w in ((y, float(lam[r])), (y2, 1 - float(lam[r]))):
                if labels[r, h] >= 0:
                    num += w * ce(z[h][r], int(labels[r, h]))
                    den += w
        want.append(num / den)
    assert mixed_per_attribute(base, z, y, y2, lam).tolist() == pytest.approx(want, rel=1e-5)
    # every lam 1: the recipe's own masked mean; and the loss uses it when the step passes mixup labels
    assert mixed_per_attribute(base, z, y, y2, torch.ones(3)).tolist() == \
        pytest.approx(base.per_attribute(z, y).tolist(), rel=1e-6)
    teacher = torch.cat([zi.softmax(-1) for zi in z], 1)
    loss = DistillLoss(base, 2.0, 0.0)  # alpha 0: the label term alone
    loss.set_targets(teacher, (y2, lam))
    assert loss(z, y).item() == pytest.approx(sum(want), rel=1e-5)


@pytest.mark.parametrize("mixup", [None, 0.4])
def test_a_killed_views_student_resumes_to_the_uninterrupted_one(runs, tiny_root, mixup, capsys):
    """bench.distill --mode views end to end: run.json records the views, the row names them, the stored views are
    reused on resume (not labelled again) and the resumed run equals the uninterrupted one."""
    import pandas as pd

    from bench.artifacts import read_run
    from bench.distilling.distill import DistillSpec, distill
    from bench.distilling.views import VIEWS_FILE
    spec = lambda run: DistillSpec(teacher="default,b", student="resnet18", runs_dir=runs, run=run,  # noqa: E731
                                   mode="views", views=2, mixup=mixup, data=tiny_root, progress=False,
                                   checkpoint_every=0,
                                   overrides={"size": 32, "epochs": 3, "batch_size": 16, "pretrained": "none"})
    full = distill(spec("full"), "cpu")
    d = full["distill"]
    assert d["views"]["count"] == 2 and d["views"]["mixup"] == mixup and d["targets"] == "in-sample"
    assert d["provenance"].startswith("distilled from `default,b` (views: 2 stored views"
                                      + (", mixup 0.4" if mixup else "") + ", T 2, alpha 0.5); targets in-sample")

    def kill(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(spec("cut"), "cpu", on_epoch=kill)
    cut = runs / "cut" / "resnet18"
    stamp = (cut / VIEWS_FILE).stat().st_mtime_ns
    capsys.readouterr()
    distill(spec("cut"), "cpu")
    out = capsys.readouterr().out
    assert "teacher views: reusing" in out and (cut / VIEWS_FILE).stat().st_mtime_ns == stamp
    drop = ["train_s", "img_per_s", "epoch_s"]
    pd.testing.assert_frame_equal(pd.read_csv(runs / "full/resnet18/history.csv").drop(columns=drop),
                                  pd.read_csv(cut / "history.csv").drop(columns=drop))
    assert read_run(cut).meta["config"] == full["config"]
    with np.load(runs / "full/resnet18/probs_val.npz") as a, np.load(cut / "probs_val.npz") as b:
        assert np.array_equal(a["plain"], b["plain"])
