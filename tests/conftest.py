"""Shared fixtures: a tiny demo dataset written once per test session, and an isolated cache folder."""
import shutil

import pytest

from bench.data.demo import DemoSpec, write_demo

TINY = DemoSpec(seed=0, train=120, val=40, test=30, width=48, height=64)


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
