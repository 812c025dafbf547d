"""Datasets larger than memory (issue #24): a split in data mode `stream` reads its batches from the memory-mapped
decode cache (tests/test_demo_and_cache.py checks how that file is written), and `auto` picks the mode by memory.
Stream mode gives the resident mode's numbers bit for bit on the CPU (the same uint8 rows reach the same augmentation
and model): training history, probabilities, k-fold out-of-fold probabilities, data-parallel shards."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from bench.data import open_dataset
from bench.run import main as run_main
from bench.training.trainer import MappedImages, Split

TIMING = ("train_s", "img_per_s", "epoch_s")


def test_mapped_images_gather_the_rows_of_several_files(tmp_path):
    a = np.random.default_rng(0).integers(0, 255, (10, 4, 4, 3), dtype=np.uint8)
    b = np.random.default_rng(1).integers(0, 255, (6, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    ma, mb = (np.load(tmp_path / f, mmap_mode="r") for f in ("a.npy", "b.npy"))
    ra, rb = np.array([1, 7, 3]), np.array([5, 0])
    x = MappedImages([(ma, ra), (mb, rb)], "cpu")
    whole = torch.from_numpy(np.concatenate([a[ra], b[rb]])).permute(0, 3, 1, 2).contiguous()
    assert x.shape == whole.shape and len(x) == 5 and x.nbytes == whole.numel()
    idx = torch.tensor([4, 0, 3, 2, 2])
    assert torch.equal(x[idx], whole[idx]) and torch.equal(x[1:4], whole[1:4]) and torch.equal(x[:], whole)
    batches = [torch.tensor([3, 1]), torch.tensor([0, 4])]
    got = list(x.prefetch(iter(batches)))
    assert all(torch.equal(i, j) and torch.equal(g, whole[j]) for (i, g), j in zip(got, batches))
    one = Split.from_numpy(ma, None, "cpu", mode="stream")
    assert one.mode == "stream" and torch.equal(one.x[:], Split.from_numpy(a, None, "cpu").x)


def _run(root, out, mode, *extra):
    return run_main(["--models", "resnet18", "--data", str(root), "--out", str(out), "--size", "32", "--epochs", "2",
                     "--batch-size", "16", "--pretrained", "none", "--no-progress", "--no-report", "--data-mode", mode,
                     *extra])


def _same_run(a, b):
    ha, hb = (pd.read_csv(d / "history.csv").drop(columns=list(TIMING)) for d in (a, b))
    pd.testing.assert_frame_equal(ha, hb, check_exact=True)
    for split in ("val", "test"):
        pa, pb = (np.load(d / f"probs_{split}.npz") for d in (a, b))
        for k in ("plain", "flip"):
            assert np.array_equal(pa[k], pb[k]), (split, k)


def test_stream_mode_trains_and_predicts_exactly_as_resident(tiny_root, tmp_path, capsys):
    _run(tiny_root, tmp_path / "r", "resident")
    _run(tiny_root, tmp_path / "s", "stream")
    out = capsys.readouterr().out
    assert "[data] resident: --data-mode resident (given)" in out and "[data] stream: --data-mode stream (given)" in out
    _same_run(tmp_path / "r" / "default" / "resnet18", tmp_path / "s" / "default" / "resnet18")
    ra, sa = (json.loads((tmp_path / d / "default" / "resnet18" / "run.json").read_text()) for d in ("r", "s"))
    assert ra["data_mode"]["mode"] == "resident" and sa["data_mode"]["mode"] == "stream"
    assert "GiB" in sa["data_mode"]["reason"] and ra["config"] == sa["config"]  # the mode is not part of the config
    # the same run in the other mode is the same run: it is skipped as finished, not refused as another config
    _run(tiny_root, tmp_path / "r", "stream")
    assert "already finished" in capsys.readouterr().out


def test_kfold_in_stream_mode_gives_the_resident_out_of_fold_probabilities(tiny_root, tmp_path):
    _run(tiny_root, tmp_path / "r", "resident", "--folds", "2", "--epochs", "1")
    _run(tiny_root, tmp_path / "s", "stream", "--folds", "2", "--epochs", "1")
    for f in ("fold-0", "fold-1"):
        _same_run(*(tmp_path / d / "default" / "resnet18" / f for d in ("r", "s")))
    oof = [np.load(tmp_path / d / "default" / "resnet18" / "probs_val.npz") for d in ("r", "s")]
    assert np.array_equal(oof[0]["plain"], oof[1]["plain"])


def test_auto_picks_resident_when_the_splits_fit_and_stream_when_not(tiny_root, tmp_path, monkeypatch, capsys):
    import bench.training.train as train
    from bench.training.train import choose_data_mode
    mode, why = choose_data_mode("auto", 2**30, torch.device("cpu"))
    assert mode in ("resident", "stream") and "MemAvailable" in why
    monkeypatch.setattr(train, "mem_available", lambda: 10 * 2**30)
    assert choose_data_mode("auto", 2**30, "cpu")[0] == "resident"  # 2.4 GiB of 10
    mode, why = choose_data_mode("auto", 4 * 2**30, "cpu")  # 9.6 GiB of 10: not comfortably
    assert mode == "stream" and "decoded splits 4.00 GiB" in why and "9.60 GiB" in why and "10.00 GiB available" in why
    assert choose_data_mode("resident", 4 * 2**30, "cpu")[0] == "resident"  # a given mode is kept, with the facts
    monkeypatch.setattr(train, "mem_available", lambda: 2**20)  # 1 MiB available: the tiny set streams
    _run(tiny_root, tmp_path / "a", "auto", "--epochs", "1")
    out = capsys.readouterr().out
    assert "[data] stream: auto: does not fit comfortably" in out
    meta = json.loads((tmp_path / "a" / "default" / "resnet18" / "run.json").read_text())
    assert meta["data_mode"]["mode"] == "stream" and meta["data_mode"]["reason"].startswith("auto:")


def _rank_main(rank, world, port, root, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from bench.data import class_counts
    from bench.training.distributed import from_env
    from bench.training.train import ImageStore
    from test_ddp import TINY, _make
    dist = from_env("cpu")
    ds = open_dataset(root)
    counts = class_counts(ds.splits["train"].labels, ds.num_classes)
    result = {}
    for mode in ("resident", "stream"):
        store = ImageStore(ds, "cpu", progress=False, dist=dist, mode=mode)
        tr = _make(store, counts, os.path.join(out, mode), TINY.updated(epochs=2), dist, persist=False)
        assert tr.train.mode == mode
        hist = tr.fit()
        result[mode] = {"hist": [{k: v for k, v in r.items() if k not in TIMING} for r in hist],
                        "probs": tr.predict_split(store.split("test", 32, "letterbox"))}
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    dist.close()


def test_data_parallel_shards_stream_exactly_as_resident(tiny_root, tmp_path):
    import torch.multiprocessing as mp
    from test_ddp import _free_port
    mp.spawn(_rank_main, args=(2, _free_port(), str(tiny_root), str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        res = torch.load(tmp_path / f"rank{r}.pt", weights_only=False)
        assert res["resident"]["hist"] == res["stream"]["hist"]
        assert torch.equal(res["resident"]["probs"], res["stream"]["probs"])
