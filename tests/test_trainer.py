import json

import numpy as np
import pandas as pd
import pytest
from conftest import assert_resume_equals_uninterrupted, build_trainer
import torch

from bench.training.augment import augment
from bench.data import open_dataset
from bench.run import main as run_main
from bench.training.trainer import NonFiniteLoss, Split
from zoo import Recipe, create_model

TINY = Recipe(size=32, epochs=4, batch_size=16, warmup_epochs=1, pretrained="none", crop_scale=0.5)


def make_trainer(root, run_dir, recipe=TINY, **kw):
    return build_trainer(root, run_dir, recipe, **kw)


@pytest.mark.parametrize("per_step", [False, True])
def test_resume_after_interrupt_gives_same_history(tiny_root, tmp_path, per_step):
    recipe = TINY.updated(lr_per_step=per_step)  # per step: the resumed run continues the schedule at its step
    assert_resume_equals_uninterrupted(lambda d, **kw: make_trainer(tiny_root, d, recipe, **kw), tmp_path, rtol=1e-5)


def test_out_of_memory_splits_the_step_and_keeps_the_recipe(tiny_root, tmp_path):
    """An OOM re-runs the same step as two micro-batches with gradient accumulation: the effective batch (and so
    the lr and the number of steps) stays the recipe's. Without BatchNorm in the way (eval-mode BN), the update equals
    the full-batch one."""
    tr = make_trainer(tiny_root, tmp_path, TINY.updated(epochs=1, label_smoothing=0.0))
    forward, calls = tr.model.forward, []

    def limited(x):
        if tr.model.training:
            calls.append(len(x))
        if tr.model.training and len(x) > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(x)

    tr.model.forward = limited
    hist = tr.fit()
    assert len(hist) == 1 and hist[0]["batch_size"] == 16 and hist[0]["micro_batch"] == 8
    assert calls[:3] == [16, 8, 8]  # the failed step itself is redone, split in two
    steps = 120 // 16
    assert calls[1:] == [8] * (2 * steps)  # every step of the epoch: 2 micro-batches, same number of steps

    # accumulation is exact: one step on 16 images == one step as 2 x 8 (BatchNorm frozen so batches don't matter)
    a = make_trainer(tiny_root, tmp_path / "a", TINY.updated(epochs=1, dropout=0.0))
    b = make_trainer(tiny_root, tmp_path / "b", TINY.updated(epochs=1, dropout=0.0))
    b.micro_batch = 8
    x, y = a.train.x[:16].float(), a.train.y[:16]
    for t in (a, b):
        t.model.eval()
        t._step(x, y)
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.allclose(pa, pb, atol=1e-5), name


def test_out_of_memory_below_the_floor_stops_with_a_message(tiny_root, tmp_path):
    from bench.training.trainer import OutOfMemory
    tr = make_trainer(tiny_root, tmp_path, TINY.updated(epochs=1), min_micro_batch=8)

    def always(x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    tr.model.forward = always
    with pytest.raises(OutOfMemory, match="even with micro-batches of 8 images"):
        tr.fit()


def test_resume_loads_state_on_the_cpu_whatever_the_device(tiny_root, tmp_path):
    """RNG states must come back as CPU ByteTensors: loading with map_location=<training device> broke resume on
    CUDA. The meta device stands in for "a device that is not the CPU" here."""
    tr = make_trainer(tiny_root, tmp_path, TINY.updated(epochs=1))
    tr.fit()
    from bench.training.trainer import read_state
    st = read_state(tr.last_path)
    assert st["rng"]["torch"].device.type == "cpu" and st["rng"]["gen"].device.type == "cpu"
    again = make_trainer(tiny_root, tmp_path, TINY.updated(epochs=1))
    real_load = torch.load
    torch_load = lambda *a, **kw: real_load(*a, **{**kw, "map_location": kw.get("map_location", "meta")})  # noqa
    import bench.training.trainer as trainer_mod
    trainer_mod.torch.load, saved = torch_load, trainer_mod.torch.load
    try:
        assert again.restore_last() and again.epoch == 1
    finally:
        trainer_mod.torch.load = saved


def test_checkpoint_interval_bounds_saves(tiny_root, tmp_path):
    """With a long interval only the first epoch (to measure a save) and the last are written; with 0, every one."""
    saves = []
    tr = make_trainer(tiny_root, tmp_path / "long", TINY, checkpoint_every=3600)
    real = tr.save_last
    tr.save_last = lambda: (saves.append(tr.epoch), real())
    tr.fit()
    assert saves == [1, 4]
    saves.clear()
    tr = make_trainer(tiny_root, tmp_path / "every", TINY, checkpoint_every=0)
    real = tr.save_last
    tr.save_last = lambda: (saves.append(tr.epoch), real())
    tr.fit()
    assert saves == [1, 2, 3, 4]
    trial = make_trainer(tiny_root, tmp_path / "trial", TINY.updated(epochs=2), persist=False)
    trial.fit()
    assert not list((tmp_path / "trial").glob("*.pt")) and trial.best_state()["epoch"] == trial.best_epoch


def test_nan_loss_names_epoch_and_step(tiny_root, tmp_path):
    tr = make_trainer(tiny_root, tmp_path, TINY.updated(epochs=1))
    calls = {"n": 0}
    real = tr.criterion.forward

    def poisoned(logits, y):
        calls["n"] += 1
        loss = real(logits, y)
        return loss * float("nan") if calls["n"] == 3 else loss

    tr.criterion.forward = poisoned
    with pytest.raises(NonFiniteLoss, match="epoch 1, step 3"):
        tr.fit()


def test_early_stopping(tiny_root, tmp_path):
    tr = make_trainer(tiny_root, tmp_path, TINY.updated(epochs=6, early_stop=2))
    tr.validate = lambda: {"val_loss": 1.0, "overall_acc": 0.5, "class_avg_acc": 0.4, "mean_class_acc": 0.3}  # never improves
    hist = tr.fit()
    assert len(hist) == 3 and tr.best_epoch == 1


def test_augment_is_seeded_and_identity_without_randomness():
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(augment(x, g1), augment(x, g2))
    plain = augment(x, g1, crop_scale=1.0, hflip=False, rotate=0.0, jitter=0.0)
    assert torch.equal(plain, x.float())


def test_flip_only_gives_the_image_or_its_mirror_exactly():
    """crop_scale 1 + no rotation (the effb3-300 recipe) used to still draw an aspect ratio and a shift."""
    x = torch.randint(0, 256, (64, 3, 12, 10), dtype=torch.uint8)
    out = augment(x, torch.Generator().manual_seed(0), crop_scale=1.0, hflip=True, rotate=0.0, jitter=0.0)
    same = (out == x.float()).flatten(1).all(1)
    mirror = (out == x.flip(3).float()).flatten(1).all(1)
    assert bool((same | mirror).all()) and 10 < int(mirror.sum()) < 54


def test_crop_area_is_within_range_and_the_crop_fits():
    from bench.training.augment import crop_boxes
    for scale in (0.08, 0.35, 0.9, 1.0):
        sx, sy, tx, ty = crop_boxes(20000, scale, torch.Generator().manual_seed(0), "cpu")
        area = sx * sy
        assert float(area.min()) >= scale - 1e-6 and float(area.max()) <= 1 + 1e-6
        assert float(sx.max()) <= 1 + 1e-6 and float(sy.max()) <= 1 + 1e-6  # inside the image: no clamping
        assert bool(((tx.abs() <= 1 - sx + 1e-6) & (ty.abs() <= 1 - sy + 1e-6)).all())
        ratio = sx / sy
        assert float(ratio.min()) >= 3 / 4 - 1e-5 and float(ratio.max()) <= 4 / 3 + 1e-5
    # uniform in area: the mean of U(0.35, 1) is 0.675
    sx, sy, _, _ = crop_boxes(20000, 0.35, torch.Generator().manual_seed(1), "cpu")
    assert float((sx * sy).mean()) == pytest.approx(0.675, abs=0.01)


def test_run_cli_writes_artifacts(tiny_root, tmp_path):
    out = tmp_path / "runs"
    args = ["--models", "resnet18", "--data", str(tiny_root), "--out", str(out), "--size", "32", "--epochs", "2",
            "--batch-size", "16", "--pretrained", "none", "--no-progress", "--no-report"]
    run_main(args)
    d = out / "default" / "resnet18"
    meta = json.loads((d / "run.json").read_text())
    for key in ("config", "init", "params", "gflops", "device", "train_time_s", "img_per_s", "val", "val_tta",
                "best_epoch", "torch"):
        assert key in meta, key
    assert meta["status"] == "done" and meta["config"]["dataset"] == open_dataset(tiny_root).fingerprint()
    import timm
    backbone = sum(p.numel() for p in timm.create_model("resnet18", num_classes=0).parameters())
    assert meta["init"]["init"] == "scratch" and meta["params"] == backbone + 512 * 26 + 26  # + the fused head
    assert meta["gflops"] == pytest.approx(2 * 1.814 * (32 / 224) ** 2, rel=0.05)  # 1.81 GMACs at 224, x area
    val = np.load(d / "probs_val.npz")
    assert val["plain"].shape == (40, 26) and val["flip"].shape == (40, 26) and val["labels"].shape == (40, 6)
    assert np.allclose(val["plain"][:, :7].sum(1), 1, atol=1e-4)
    assert np.load(d / "probs_test.npz")["plain"].shape == (30, 26)
    assert len(pd.read_csv(d / "history.csv")) == 2
    from PIL import Image
    with Image.open(d / "curves.png") as im:  # a real, complete PNG of the figure's size (9 x 3.2 in at 90 dpi)
        im.load()
        assert im.size == (810, 288) and len(im.getcolors(1 << 16) or range(300)) > 20
    # same command again: nothing retrained; a changed recipe under the same run name is refused
    mtime = (d / "best.pt").stat().st_mtime_ns
    run_main(args)
    assert (d / "best.pt").stat().st_mtime_ns == mtime
    with pytest.raises(SystemExit):
        run_main([*args[:-4], "--lr", "0.5", "--no-progress", "--no-report"])


def test_parameter_groups_get_the_recipes_learning_rates(tiny_root, tmp_path):
    recipe = TINY.updated(lr=0.02, backbone_lr_scale=0.1, weight_decay=0.05, warmup_epochs=0, optimizer="nesterov")
    tr = make_trainer(tiny_root, tmp_path, recipe)
    names = {id(p): n for n, p in tr.model.named_parameters()}
    seen = set()
    for g in tr.optimizer.param_groups:
        for p in g["params"]:
            n = names[id(p)]
            seen.add(n)
            assert g["lr"] == pytest.approx(0.002 if n.startswith("backbone.") else 0.02), n
            assert g["weight_decay"] == (0.0 if p.ndim == 1 else 0.05), n
            assert g["nesterov"] and g["momentum"] == 0.9
    assert seen == set(names.values())  # every parameter is trained, once


def test_run_records_the_recipe_chosen_by_init(tiny_root, tmp_path):
    out = tmp_path / "runs"
    run_main(["--models", "resnet18", "--data", str(tiny_root), "--out", str(out), "--size", "32", "--epochs", "1",
              "--batch-size", "16", "--pretrained", "none", "--no-progress", "--no-report"])
    meta = json.loads((out / "default/resnet18/run.json").read_text())
    assert meta["config"]["recipe"]["name"] == "scratch" and meta["init"]["init"] == "scratch"
    assert meta["input"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def test_last_epoch_selection_ignores_early_stopping(tiny_root, tmp_path):
    """select=last with early_stop used to stop at epoch `early_stop` with no weights saved, then crash."""
    tr = make_trainer(tiny_root, tmp_path, TINY.updated(epochs=3, early_stop=1, select="last"))
    hist = tr.fit()
    assert len(hist) == 3 and tr.best_state()["epoch"] == 3


def test_tta_recomputation_normalises_as_the_checkpoint_was_trained():
    """Runs recorded before models normalised themselves were trained with ImageNet's mean/std, whatever the
    backbone; newer runs record theirs in run.json `input`."""
    from bench.ensembling.tta import restore_input_config
    model, _ = create_model("tf_efficientnet_lite0", (7, 3, 3, 4, 6, 3), pretrained="none")
    assert model.input_config["mean"] == [0.5, 0.5, 0.5]  # the backbone's own
    restore_input_config(model, {})  # an old run.json: no `input`
    assert torch.allclose(model.pixel_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]) * 255)
    assert torch.allclose(model.pixel_std.flatten(), torch.tensor([0.229, 0.224, 0.225]) * 255)
    restore_input_config(model, {"input": {"mean": [0.5] * 3, "std": [0.25] * 3}})
    assert torch.allclose(model.pixel_std.flatten(), torch.full((3,), 63.75))


def test_crop_ratio_bounds_the_aspect_and_one_gives_square_crops():
    from bench.training.augment import crop_boxes
    for ratio in (1.0, 2.0):
        sx, sy, tx, ty = crop_boxes(20000, 0.36, torch.Generator().manual_seed(0), "cpu", crop_ratio=ratio)
        r = sx / sy
        assert float(r.min()) >= 1 / ratio - 1e-5 and float(r.max()) <= ratio + 1e-5
        assert float((sx * sy).min()) >= 0.36 - 1e-6 and float(sx.max()) <= 1 + 1e-6 and float(sy.max()) <= 1 + 1e-6
    # square: side fraction = sqrt(area), 0.6 .. 1 for an area of 0.36 .. 1
    sx, sy, _, _ = crop_boxes(1000, 0.36, torch.Generator().manual_seed(0), "cpu", crop_ratio=1.0)
    assert torch.allclose(sx, sy) and float(sx.min()) >= 0.6 - 1e-6


def test_train_margin_decodes_only_train_larger_and_crops_to_the_eval_size(tiny_root, tmp_path):
    """train_margin: train images decoded at size x margin, val/test at size; the trainer's crops come out at the
    val side, so the model sees one input size."""
    from bench.training.train import ImageStore, train_model, train_side
    ds = open_dataset(tiny_root)
    recipe = TINY.updated(epochs=1, resize="stretch", train_margin=1 / 0.88)
    assert train_side(32, recipe) == 36 and train_side(96, recipe) == 109 and train_side(224, recipe) == 255
    store = ImageStore(ds, "cpu", progress=False)
    train_model("resnet18", ds, store, recipe, 32, tmp_path / "m", progress=False)
    assert sorted(store._arrays) == [("test", 32, "stretch"), ("train", 36, "stretch"), ("val", 32, "stretch")]
    tr = make_trainer(tiny_root, tmp_path / "t", recipe)
    tr.train = Split.from_numpy(store.array("train", 36, "stretch"), ds.splits["train"].labels, "cpu")
    assert tuple(tr.augment_batch(torch.arange(16)).shape) == (16, 3, 32, 32)


def test_per_step_schedule_moves_within_the_epoch_and_meets_the_epoch_schedule_at_boundaries(tiny_root, tmp_path):
    recipe = TINY.updated(lr=0.1, epochs=3, warmup_epochs=1, optimizer="nesterov")
    step = make_trainer(tiny_root, tmp_path / "s", recipe.updated(lr_per_step=True))
    epoch = make_trainer(tiny_root, tmp_path / "e", recipe)
    n = step.steps_per_epoch
    assert n >= 2
    step.train_epoch(max_steps=1)
    epoch.train_epoch(max_steps=1)
    # warmup from lr x 0.01 to lr over the first epoch's n steps, linear per step (timm): after step 1
    assert step.optimizer.param_groups[0]["lr"] == pytest.approx(0.001 + (0.1 - 0.001) / n)
    assert epoch.optimizer.param_groups[0]["lr"] == pytest.approx(0.001)  # per epoch: still the warmup start
    s_hist = make_trainer(tiny_root, tmp_path / "s2", recipe.updated(lr_per_step=True)).fit()
    e_hist = make_trainer(tiny_root, tmp_path / "e2", recipe).fit()
    # both follow one curve, cosine over 3 epochs (t counted from 0) with a floor of lr x 1e-3: history's lr is the
    # lr the epoch trained at for the per-epoch schedule, the lr after the epoch's last step for the per-step one
    cosine = [1e-4 + 0.5 * (0.1 - 1e-4) * (1 + np.cos(np.pi * t / 3)) for t in (1, 2)]
    assert [h["lr"] for h in e_hist] == pytest.approx([0.001, *cosine], rel=1e-6)
    assert [h["lr"] for h in s_hist] == pytest.approx([*cosine, 1e-4], rel=1e-6)


def test_fractional_warmup_ends_within_the_first_epoch(tiny_root, tmp_path):
    """warmup_epochs = 0.5 with lr_per_step: linear warmup over the first n/2 of the n steps of an epoch (the plain
    loop warmed up over a fraction of its steps), then the cosine over all 3 epochs' steps, counted from step 0."""
    recipe = TINY.updated(lr=0.1, epochs=3, warmup_epochs=0.5, optimizer="nesterov", lr_per_step=True)
    n = make_trainer(tiny_root, tmp_path / "probe", recipe).steps_per_epoch
    assert n >= 4
    lr_after = {}
    for k in (1, n // 2 + 1):
        tr = make_trainer(tiny_root, tmp_path / f"k{k}", recipe)
        tr.train_epoch(max_steps=k)
        lr_after[k] = tr.optimizer.param_groups[0]["lr"]
    assert lr_after[1] == pytest.approx(0.001 + (0.1 - 0.001) / (n / 2))  # twice the slope of a 1-epoch warmup
    t = n // 2 + 1  # past the warmup: on the cosine, floor lr x 1e-3
    assert lr_after[t] == pytest.approx(1e-4 + 0.5 * (0.1 - 1e-4) * (1 + np.cos(np.pi * t / (3 * n))))
    with pytest.raises(ValueError, match="lr_per_step"):
        Recipe(warmup_epochs=0.5)  # a per-epoch schedule cannot warm up for half an epoch
    assert Recipe(warmup_epochs=1.0).warmup_epochs == 1  # a whole number of epochs is fine either way


@pytest.mark.parametrize("warmup", [0, 2])
def test_plateau_schedule_sets_the_lrs_timms_deprecated_one_set(warmup):
    """bench/training/schedules.py replaces timm's PlateauLRScheduler (deprecated): the same lr for every group at
    every epoch, with lr scales, warm-up and metric plateaus, and the same state_dict (old states resume)."""
    import warnings
    timm_plateau = pytest.importorskip("timm.scheduler.plateau_lr").PlateauLRScheduler
    from bench.training.schedules import PlateauSchedule

    def optimizer():
        w = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
        return torch.optim.SGD([{"params": [w[0]], "lr": 0.1, "lr_scale": 0.1}, {"params": [w[1]], "lr": 0.1}])

    ours, theirs = optimizer(), optimizer()
    a = PlateauSchedule(ours, 0.5, 1, warmup, 1e-3, 1e-4, "max")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        b = timm_plateau(theirs, decay_rate=0.5, patience_t=1, cooldown_t=0, warmup_t=warmup, warmup_lr_init=1e-3,
                         lr_min=1e-4, mode="max")
    metrics = [0.1, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]
    assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]
    for epoch, m in enumerate(metrics, 1):
        a.step(epoch, m)
        b.step(epoch, m)
        assert [g["lr"] for g in ours.param_groups] == pytest.approx([g["lr"] for g in theirs.param_groups], rel=1e-12)
        assert a.state_dict() == b.state_dict()
    assert ours.param_groups[1]["lr"] < 0.1 / 4  # it did decay, several times


def test_per_step_schedule_needs_the_cosine_schedule():
    with pytest.raises(ValueError, match="lr_per_step"):
        Recipe(lr_per_step=True, schedule="plateau")
    with pytest.raises(ValueError, match="train_margin"):
        Recipe(train_margin=0.9)
    with pytest.raises(ValueError, match="crop_ratio"):
        Recipe(crop_ratio=0.5)


def test_side_sampling_draws_the_crop_side_uniformly():
    """sampling="side": the side fraction is uniform in [sqrt(crop_scale), 1] (the plain loop's "square crop of
    60-100% of the side"), so the mean area is E[U(0.6, 1)^2] = (1 - 0.6^3) / (3 x 0.4) = 0.6533, below the 0.68 of
    an area uniform in [0.36, 1]."""
    from bench.training.augment import crop_boxes
    sx, sy, tx, ty = crop_boxes(20000, 0.36, torch.Generator().manual_seed(0), "cpu", 1.0, "side")
    assert torch.allclose(sx, sy) and float(sx.min()) >= 0.6 - 1e-6 and float(sx.max()) <= 1 + 1e-6
    assert float(sx.mean()) == pytest.approx(0.8, abs=0.005)
    assert float((sx < 0.7).float().mean()) == pytest.approx(0.25, abs=0.01)  # uniform: a quarter of [0.6, 1]
    assert float((sx * sy).mean()) == pytest.approx(0.6533, abs=0.005)
    area = crop_boxes(20000, 0.36, torch.Generator().manual_seed(0), "cpu", 1.0, "area")
    assert float((area[0] * area[1]).mean()) == pytest.approx(0.68, abs=0.005)
    with pytest.raises(ValueError, match="crop sampling"):
        crop_boxes(4, 0.36, torch.Generator(), "cpu", 1.0, "length")


def test_pixel_boxes_round_to_whole_pixels_inside_the_image():
    from bench.training.augment import pixel_boxes
    t = lambda *v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    # half the side, centred / pushed to the right and bottom edges / a 0.3 x 0.7 box at the top-left corner
    boxes = pixel_boxes(t(0.5, 0.5, 0.3), t(0.5, 0.5, 0.7), t(0.0, 0.5, -0.7), t(0.0, 0.5, -0.3), 40, 40)
    assert boxes.tolist() == [[10, 10, 20, 20], [20, 20, 20, 20], [0, 0, 28, 12]]


def test_antialiased_crops_equal_torchvision_resized_crop_of_the_same_boxes():
    """crop_antialias: each crop is torchvision's resized_crop(antialias=True) of its whole-pixel box (an independent
    implementation), flipped where drawn; and a shrunk checkerboard comes out flat grey, where the bilinear warp
    aliases it into stripes."""
    from torchvision.transforms.v2 import functional as TF

    from bench.training.augment import crop_boxes, pixel_boxes
    x = torch.randint(0, 256, (12, 3, 40, 40), dtype=torch.uint8)
    out = augment(x, torch.Generator().manual_seed(3), crop_scale=0.36, hflip=True, rotate=0.0, jitter=0.0,
                  out_size=32, crop_ratio=1.0, crop_sampling="side", antialias=True)
    g = torch.Generator().manual_seed(3)  # the same draws, in the same order: boxes, then the flips
    boxes = pixel_boxes(*crop_boxes(12, 0.36, g, "cpu", 1.0, "side"), 40, 40)
    mirror = torch.rand(12, generator=g) < 0.5
    assert 24 <= int(boxes[:, 2].min()) and int(boxes[:, 2].max()) <= 40 and bool((boxes[:, 2] == boxes[:, 3]).all())
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        ref = TF.resized_crop(x[i].float(), top, left, h, w, [32, 32], antialias=True)
        assert torch.allclose(out[i], ref.flip(2) if mirror[i] else ref, atol=1e-3)
    i = torch.arange(48)
    board = (((i[:, None] + i[None, :]) % 2) * 255).to(torch.uint8).expand(2, 3, 48, 48)
    flat = dict(crop_scale=1.0, hflip=False, rotate=0.0, jitter=0.0, out_size=32)
    assert float(augment(board, torch.Generator(), antialias=True, **flat).std()) < 3  # ~127.5 everywhere
    assert float(augment(board, torch.Generator(), antialias=False, **flat).std()) > 25


def test_trainer_passes_the_recipe_crop_fields_and_lr_floor(tiny_root, tmp_path):
    recipe = TINY.updated(crop_scale=0.36, crop_ratio=1.0, crop_sampling="side", crop_antialias=True, rotate=0.0,
                          jitter=0.0, lr_floor=0.0, lr_per_step=True, epochs=2, optimizer="nesterov", lr=0.1)
    tr = make_trainer(tiny_root, tmp_path / "t", recipe)
    state = tr.gen.get_state()
    got = tr.augment_batch(torch.arange(16))
    want = augment(tr.train.x[:16], torch.Generator().set_state(state), 0.36, True, 0.0, 0.0, out_size=32,
                   crop_ratio=1.0, crop_sampling="side", antialias=True)
    assert torch.equal(got, want)
    history = tr.fit()
    assert history[-1]["lr"] == 0.0  # the cosine reached lr x lr_floor = 0 at the last step (default floor: 1e-4)


def test_recipe_rejects_rotated_antialiased_crops_and_a_bad_floor():
    with pytest.raises(ValueError, match="crop_antialias"):
        Recipe(crop_antialias=True, rotate=10.0)
    Recipe(crop_antialias=True, rotate=0.0)
    with pytest.raises(ValueError, match="lr_floor"):
        Recipe(lr_floor=1.0)
    with pytest.raises(ValueError, match="crop_sampling"):
        Recipe(crop_sampling="length")


def test_a_run_recorded_before_new_recipe_fields_is_the_same_run(tiny_root, tmp_path, capsys):
    """A run.json written before lr_floor / crop_sampling / crop_antialias existed (their defaults are the old
    behaviour) is finished work for the same command, not a "different config"; a real change still mismatches."""
    base = ["--models", "resnet18", "--data", str(tiny_root), "--out", str(tmp_path), "--size", "32", "--epochs", "1",
            "--batch-size", "16", "--pretrained", "none", "--no-progress", "--no-report"]
    run_main(base)
    path = tmp_path / "default" / "resnet18" / "run.json"
    meta = json.loads(path.read_text())
    for field in ("lr_floor", "crop_sampling", "crop_antialias"):
        del meta["config"]["recipe"][field]
    path.write_text(json.dumps(meta))
    capsys.readouterr()
    run_main(base)
    assert "already finished" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run_main([*base, "--set", "lr_floor=0"])
    assert "differs in: recipe" in capsys.readouterr().err


def cosine_factor(t: float, warmup: float, total: float, lr: float = 0.1, floor: float = 1e-3) -> float:
    """timm's warm-up + cosine for a base lr `lr` at position t (epochs or steps, counted from 0): linear from lr x
    0.01 over `warmup`, then the cosine over `total` down to lr x floor."""
    if t < warmup:
        return lr * 0.01 + t * (lr - lr * 0.01) / warmup
    return lr * floor + 0.5 * (lr - lr * floor) * (1 + np.cos(np.pi * t / total))


@pytest.mark.parametrize("per_step,scale", [(False, 0.1), (True, 0.0)])
def test_backbone_lr_scale_scales_the_whole_schedule(tiny_root, tmp_path, per_step, scale):
    """Every group trains at its own base lr x one schedule factor, at every step, warm-up start and floor included,
    across a resume: the heads at lr x f(t), the backbone at lr x scale x f(t). The warm-up start and the floor were
    the heads' for every group: with scale 0 ("frozen backbone") the backbone trained at 1e-3 in the first epoch and
    rose to 1e-4. history.csv records the heads' lr as `lr` (it was the backbone's) and the backbone's as
    `backbone_lr`."""
    recipe = TINY.updated(lr=0.1, epochs=2, warmup_epochs=1, backbone_lr_scale=scale, lr_per_step=per_step)
    seen = []  # per optimizer step: (heads' lrs, backbone's lrs) it ran with

    def make(**kw):
        tr = make_trainer(tiny_root, tmp_path, recipe, **kw)
        tr.optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(
            ([g["lr"] for g in opt.param_groups if not g["backbone"]],
             [g["lr"] for g in opt.param_groups if g["backbone"]])))
        return tr

    def stop_after_first(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    first = make(on_epoch=stop_after_first)
    frozen = {n: p.detach().clone() for n, p in first.model.named_parameters() if n.startswith("backbone.")}
    heads = {n: p.detach().clone() for n, p in first.model.named_parameters() if not n.startswith("backbone.")}
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    resumed = make()
    history = resumed.fit()  # epoch 2, from the state saved after epoch 1
    n = resumed.steps_per_epoch
    assert len(seen) == 2 * n and len(history) == 2
    for k, (head_lrs, backbone_lrs) in enumerate(seen):  # step k (from 0) runs at f(k) per step, f(epoch) per epoch
        f = cosine_factor(k, n, 2 * n) if per_step else cosine_factor(k // n, 1, 2)
        assert head_lrs == pytest.approx([f] * len(head_lrs), rel=1e-9), k
        assert backbone_lrs == pytest.approx([scale * f] * len(backbone_lrs), rel=1e-9, abs=0), k
        if scale == 0:
            assert backbone_lrs == [0.0] * len(backbone_lrs), k
    # warm-up start 0.001, then the cosine over 2 epochs: half-way 0.05005, at the end the floor 1e-4. history: the
    # lr an epoch trained at (per epoch), the lr after its last step (per step)
    want = [0.05005, 1e-4] if per_step else [0.001, 0.05005]
    assert [h["lr"] for h in history] == pytest.approx(want, rel=1e-9)
    assert [h["backbone_lr"] for h in history] == pytest.approx([scale * w for w in want], rel=1e-9, abs=0)
    on_disk = pd.read_csv(tmp_path / "history.csv")
    assert list(on_disk["lr"]) == pytest.approx(want, rel=1e-9)
    assert list(on_disk["backbone_lr"]) == pytest.approx([scale * w for w in want], rel=1e-9, abs=0)
    assert resumed.lrs() == pytest.approx({"lr": 1e-4, "backbone_lr": scale * 1e-4}, rel=1e-9, abs=0)  # the floor
    if scale == 0:  # lr 0: AdamW neither steps nor decays the backbone's weights (its BatchNorm statistics do move)
        for model in (first.model, resumed.model):
            for name, p in model.named_parameters():
                if name.startswith("backbone."):
                    assert torch.equal(p, frozen[name]), name
        assert any(not torch.equal(p, heads[n]) for n, p in resumed.model.named_parameters() if n in heads)


def test_plateau_schedule_keeps_the_backbone_at_its_scale_down_to_its_floor(tiny_root, tmp_path):
    """ReduceLROnPlateau had one floor for every group: the backbone (lr x 0.1) stopped at the heads' floor."""
    recipe = TINY.updated(lr=0.1, backbone_lr_scale=0.1, schedule="plateau", plateau_patience=0, warmup_epochs=1,
                          plateau_factor=0.1, lr_floor=0.01, optimizer="nesterov")
    tr = make_trainer(tiny_root, tmp_path, recipe)
    heads, backbone = [], []
    for epoch in range(1, 7):  # the same score every epoch: one reduction per epoch after the first after warm-up
        heads.append(tr.lrs()["lr"])
        backbone.append(tr.lrs()["backbone_lr"])
        tr.scheduler.step(epoch, 0.5)
    assert heads == pytest.approx([0.001, 0.1, 0.1, 0.01, 0.001, 0.001], rel=1e-9)
    assert backbone == pytest.approx([1e-4, 0.01, 0.01, 0.001, 1e-4, 1e-4], rel=1e-9)
    for g in tr.optimizer.param_groups:
        assert g["lr"] == pytest.approx(1e-4 if g["backbone"] else 1e-3, rel=1e-9)


def test_plateau_schedule_resumes_with_its_patience_count(tiny_root, tmp_path):
    """timm's plateau schedule saves only its best score: a run resumed after epoch 2 restarted the patience count
    and reduced the lr an epoch later than the uninterrupted run (the score never improves after epoch 1 here)."""
    recipe = TINY.updated(epochs=4, schedule="plateau", warmup_epochs=0, plateau_patience=1)
    scores = {1: 0.5, 2: 0.4, 3: 0.3, 4: 0.2}

    def make(run_dir, **kw):
        tr = make_trainer(tiny_root, run_dir, recipe, **kw)
        tr.validate = lambda: {"val_loss": 1.0, "overall_acc": scores[tr.epoch + 1], "class_avg_acc": 0.4,
                               "mean_class_acc": 0.3}
        train_epoch = tr.train_epoch
        tr.train_epoch = lambda: train_epoch(max_steps=1)  # the schedule is the subject: one step per epoch
        return tr

    assert_resume_equals_uninterrupted(make, tmp_path, rtol=1e-5)
    lrs = list(pd.read_csv(tmp_path / "cut" / "history.csv")["lr"])
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 1e-4], rel=1e-9)  # 2 epochs without improvement > patience 1


@pytest.mark.parametrize("first_life", [{1: 0.5, 2: 0.4, 3: 0.9}, {1: 0.4, 2: 0.5, 3: 0.9}])
def test_a_kill_between_checkpoints_leaves_best_pt_consistent_with_the_resumed_state(tiny_root, tmp_path, monkeypatch,
                                                                                     first_life):
    """best.pt is written at every improvement, last.pt only every checkpoint interval: a kill after an improvement
    that last.pt does not hold leaves best.pt from an epoch the resumed run replays. A replay that does not beat the
    state's best (on CUDA a replay differs) never overwrote it, and run.json's best_epoch named the lost epoch while
    history.csv and the resumed state selected another. Now the resumed run's best.pt is the selected epoch of the
    state it resumed, whether that is last.pt's own epoch or an earlier one (carried in last.pt)."""
    from bench.training.train import ImageStore, train_model
    from bench.training.trainer import Trainer, read_state
    ds = open_dataset(tiny_root)
    scores, weights = dict(first_life), {}
    real_run_epoch, real_train_epoch = Trainer.run_epoch, Trainer.train_epoch

    def run_epoch(self):  # records the weights each epoch ends with
        row = real_run_epoch(self)
        weights[self.epoch] = {k: v.detach().clone() for k, v in self.eval_model.state_dict().items()}
        return row

    monkeypatch.setattr(Trainer, "run_epoch", run_epoch)
    monkeypatch.setattr(Trainer, "train_epoch", lambda self: real_train_epoch(self, max_steps=1))
    monkeypatch.setattr(Trainer, "validate", lambda self: {"val_loss": 1.0, "overall_acc": scores[self.epoch + 1],
                                                           "class_avg_acc": 0.4, "mean_class_acc": 0.3})
    # last.pt after epochs 1 and 2, then not before the end
    monkeypatch.setattr(Trainer, "checkpoint_interval", lambda self: 0 if self.epoch <= 2 else 3600)

    def kill(epoch, row):
        if epoch == 3:
            raise RuntimeError("kill -9")  # not KeyboardInterrupt: nothing more is saved

    store, d = ImageStore(ds, "cpu", progress=False), tmp_path / "m"
    with pytest.raises(RuntimeError, match="kill"):
        train_model("resnet18", ds, store, TINY, 32, d, progress=False, on_epoch=kill)
    assert read_state(d / "last.pt")["epoch"] == 2 and read_state(d / "best.pt")["epoch"] == 3  # what a kill leaves
    selected = max((1, 2), key=scores.get)
    first_weights = weights[selected]
    scores.update({3: 0.45, 4: 0.3})  # the replay never beats the state's best
    meta = train_model("resnet18", ds, store, TINY, 32, d, progress=False)
    best, hist = read_state(d / "best.pt"), pd.read_csv(d / "history.csv")
    assert meta["best_epoch"] == best["epoch"] == selected == int(hist["overall_acc"].idxmax()) + 1
    assert best["metric"] == hist["best"].iloc[-1] == scores[selected]
    assert best["model"].keys() == first_weights.keys()
    for k, v in best["model"].items():
        assert torch.equal(v, first_weights[k]), k


def test_resume_from_an_older_state_without_the_selected_weights_selects_again(tiny_root, tmp_path):
    """A last.pt saved before states carried the selected epoch's weights, beside a best.pt from a lost epoch: the
    weights of the state's selected epoch exist nowhere, so the orphan goes and selection starts again after the
    state's epoch (instead of leaving best.pt from the lost epoch)."""
    from bench.training.trainer import read_state
    tr = make_trainer(tiny_root, tmp_path, TINY.updated(epochs=4, early_stop=1))
    tr.epoch, tr.best, tr.best_epoch = 2, 0.5, 1
    st = {k: v for k, v in tr.state().items() if k != "best_model"}
    torch.save(st, tmp_path / "last.pt")
    torch.save({"model": {}, "epoch": 3, "metric": 0.9}, tmp_path / "best.pt")
    again = make_trainer(tiny_root, tmp_path, TINY.updated(epochs=4, early_stop=1))
    assert again.restore_last() and (again.best, again.best_epoch) == (None, 2)
    assert not (tmp_path / "best.pt").exists() and not again.should_stop()  # early stopping counts from here
    again.run_epoch()
    assert read_state(tmp_path / "best.pt")["epoch"] == 3 == again.best_epoch


def test_from_study_selects_epochs_by_the_metric_the_study_tuned(tiny_root, tmp_path, capsys):
    """A study tuned with --metric class, re-trained by bench.run --from-study without --metric, selected its epoch
    by overall accuracy (the flag's default) without a word. Now the study's metric applies unless --metric is given,
    and the run says which it uses."""
    import optuna
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="c", storage=storage, direction="maximize")
    for key, value in (("objective", ["class_avg_acc"]), ("recipe", "v0"), ("model", "resnet18")):
        study.set_user_attr(key, value)  # what bench.tune --metric class records
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 2e-3}, distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)},
        value=0.5, user_attrs={"budget": {"epochs": 1, "size": 32, "batch_size": 16, "pretrained": "none"}}))
    out = tmp_path / "runs"
    base = ["--models", "resnet18", "--data", str(tiny_root), "--out", str(out), "--from-study", "c", "--storage",
            storage, "--no-progress", "--no-report"]
    select = lambda run: json.loads((out / run / "resnet18/run.json").read_text())["config"]["recipe"]["select"]  # noqa
    capsys.readouterr()
    run_main([*base, "--run", "a"])
    assert select("a") == "class_avg_acc"
    assert "[study c] target metric class (the one it was tuned for; --metric overrides)" in capsys.readouterr().out
    run_main([*base, "--run", "b", "--metric", "overall"])
    assert select("b") == "overall_acc"
    assert "[study c] tuned for --metric class; this run uses --metric overall (given)" in capsys.readouterr().out
