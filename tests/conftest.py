"""Shared fixtures: a tiny demo dataset written once per test session, and an isolated cache folder."""
import os
import shutil
import signal

import pytest

from bench.data.demo import DemoSpec, write_demo

# Under pytest-xdist (`-n 2`) each worker is one process of its own: one torch thread each (and in every command a
# test starts), so two workers on two cores do not oversubscribe them (two processes of 2 threads each ran 5-10x
# slower). Set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")

TINY = DemoSpec(seed=0, train=120, val=40, test=30, width=48, height=64)

# A shell without job control starts a background job (`pytest ... &`, nohup, some CI runners) with SIGINT ignored,
# and an ignored signal stays ignored across exec: every `bench.run` the Ctrl-C tests start would then ignore their
# SIGINT and run on to the timeout. A handler (unlike SIG_IGN) resets to the default at exec, so the children get a
# working Ctrl-C whatever started pytest.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def build_trainer(root, run_dir, recipe, device: str = "cpu", size: int = 32, **kw):
    """A resnet18 Trainer on `root`'s train and val splits decoded at `size`, seeded (the tests' common setup)."""
    import torch

    from bench.data import class_counts, open_dataset
    from bench.data.images import load_images
    from bench.training.trainer import Split, Trainer
    from zoo import create_model
    ds = open_dataset(root)
    splits = {s: Split.from_numpy(load_images(ds.files(s), size, progress=False), ds.splits[s].labels, device)
              for s in ("train", "val")}
    torch.manual_seed(0)
    model, _ = create_model("resnet18", ds.num_classes, recipe.dropout, recipe.hidden, "none")
    return Trainer(model, recipe, splits["train"], splits["val"], run_dir,
                   class_counts(ds.splits["train"].labels, ds.num_classes), seed=0, size=size, progress=False, **kw)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FASHION_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("FASHION_DATA", raising=False)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """Read-only tiny demo dataset shared by all tests."""
    return write_demo(tmp_path_factory.mktemp("demo") / "ds", TINY)


@pytest.fixture
def tiny_copy(tiny_root, tmp_path):
    """A private copy a test may break."""
    dst = tmp_path / "ds"
    shutil.copytree(tiny_root, dst)
    return dst


@pytest.fixture(scope="session")
def demo_runs(tiny_root, tmp_path_factory):
    """Two finished tiny CPU runs on the tiny demo set: default/resnet18 and b/resnet18. Copy before changing."""
    from bench.run import main as run_main
    out = tmp_path_factory.mktemp("runs")
    common = ["--data", str(tiny_root), "--out", str(out), "--size", "32", "--epochs", "2", "--batch-size", "16",
              "--pretrained", "none", "--no-progress", "--no-report"]
    run_main(["--models", "resnet18", *common])
    run_main(["--models", "resnet18", "--run", "b", "--label-smoothing", "0", "--lr", "3e-3", "--seed", "1", *common])
    return out


def assert_resume_equals_uninterrupted(make, tmp_path, rtol: float) -> None:
    """`make(run_dir, **kw)` builds a Trainer: a run interrupted (Ctrl-C) after epoch 2 and resumed must give the
    same history as an uninterrupted one (timings aside)."""
    import pandas as pd

    full = make(tmp_path / "full").fit()

    def interrupt(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make(tmp_path / "cut", on_epoch=interrupt).fit()
    resumed = make(tmp_path / "cut").fit()
    timing = ["train_s", "img_per_s", "epoch_s"]
    assert len(resumed) == len(full) > 2
    pd.testing.assert_frame_equal(pd.DataFrame(full).drop(columns=timing), pd.DataFrame(resumed).drop(columns=timing),
                                  check_exact=False, rtol=rtol)
