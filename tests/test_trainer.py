import json

import numpy as np
import pandas as pd
import pytest
import torch

from bench.augment import augment
from bench.data import class_counts, open_dataset
from bench.images import load_images
from bench.run import main as run_main
from bench.trainer import NonFiniteLoss, Split, Trainer
from zoo import Recipe, create_model

TINY = Recipe(size=32, epochs=4, batch_size=16, warmup_epochs=1, pretrained="none", crop_scale=0.5)
TIMING = ["train_s", "img_per_s", "epoch_s"]


def make_trainer(root, run_dir, recipe=TINY, **kw):
    ds = open_dataset(root)
    splits = {s: Split.from_numpy(load_images(ds.files(s), 32, progress=False), ds.splits[s].labels, "cpu")
              for s in ("train", "val")}
    torch.manual_seed(0)
    model, _ = create_model("resnet18", ds.num_classes, recipe.dropout, recipe.hidden, "none")
    counts = class_counts(ds.splits["train"].labels, ds.num_classes)
    return Trainer(model, recipe, splits["train"], splits["val"], run_dir, counts, seed=0, size=32,
                   progress=False, **kw)


def test_resume_after_interrupt_gives_same_history(tiny_root, tmp_path):
    full = make_trainer(tiny_root, tmp_path / "full").fit()

    def interrupt(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_trainer(tiny_root, tmp_path / "cut", on_epoch=interrupt).fit()
    resumed = make_trainer(tiny_root, tmp_path / "cut").fit()
    assert len(resumed) == len(full) == 4
    a = pd.DataFrame(full).drop(columns=TIMING)
    b = pd.DataFrame(resumed).drop(columns=TIMING)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5)


def test_out_of_memory_halves_batch_and_retries(tiny_root, tmp_path):
    tr = make_trainer(tiny_root, tmp_path, TINY.updated(epochs=1))
    forward = tr.model.forward

    def limited(x):
        if tr.model.training and len(x) > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(x)

    tr.model.forward = limited
    hist = tr.fit()
    assert len(hist) == 1 and hist[0]["batch_size"] == 8


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
    tr.validate = lambda: {"val_loss": 1.0, "overall_acc": 0.5, "mean_class_acc": 0.3}  # never improves
    hist = tr.fit()
    assert len(hist) == 3 and tr.best_epoch == 1


def test_augment_is_seeded_and_identity_without_randomness():
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(augment(x, g1), augment(x, g2))
    plain = augment(x, g1, crop_scale=1.0, hflip=False, rotate=0.0, jitter=0.0)
    from bench.augment import normalize
    assert torch.allclose(plain, normalize(x), atol=1e-4)


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
    assert meta["init"]["init"] == "scratch" and meta["params"] > 1e6 and meta["gflops"] > 0
    val = np.load(d / "probs_val.npz")
    assert val["plain"].shape == (40, 26) and val["flip"].shape == (40, 26) and val["labels"].shape == (40, 6)
    assert np.allclose(val["plain"][:, :7].sum(1), 1, atol=1e-4)
    assert np.load(d / "probs_test.npz")["plain"].shape == (30, 26)
    assert len(pd.read_csv(d / "history.csv")) == 2 and (d / "curves.png").stat().st_size > 1000
    # same command again: nothing retrained; a changed recipe under the same run name is refused
    mtime = (d / "best.pt").stat().st_mtime_ns
    run_main(args)
    assert (d / "best.pt").stat().st_mtime_ns == mtime
    with pytest.raises(SystemExit):
        run_main([*args[:-4], "--lr", "0.5", "--no-progress", "--no-report"])
