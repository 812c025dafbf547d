"""Shared fixtures: a tiny demo dataset written once per test session, and an isolated cache folder."""
import shutil

import pytest

from bench.demo import DemoSpec, write_demo

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
