"""Data-parallel training (bench/training/distributed.py) on the CPU: gloo backend, 2 processes, tiny dataset.

- One DDP step equals one single-process step on the same global batch: the ranks' own augmented local batches
  (captured, so the reference sees the same images with the same augmentation), concatenated in rank order. With
  per-rank BatchNorm (the documented choice) the matching single-process step is the trainer's micro-batch path with
  micro-batches of the per-rank size ("ghost" BatchNorm); a full-batch-BN reference is shown to differ by far more
  than the tolerance, so the comparison does see BatchNorm. Dropout is off in that comparison: its masks are
  per-rank random draws the reference cannot repeat.
- A DDP run interrupted after epoch 2 and resumed gives the uninterrupted run's history.
- `torchrun --nproc-per-node 2 -m bench.run` writes one set of artifacts whose probabilities are in the split's order
  and equal a single process's predictions with the saved weights.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.training.distributed import SINGLE, check_batch, from_env, shard_indices
from zoo import Recipe

TINY = Recipe(size=32, epochs=3, batch_size=16, warmup_epochs=1, pretrained="none", crop_scale=0.5)
# The one-step comparison: no dropout (per-rank random masks), and plain SGD, whose update is linear in the gradient
# (Adam's first step is lr * sign(g): a gradient that is rounding noise, ~1e-9, becomes a full +-lr step either way).
STEP = TINY.updated(epochs=1, dropout=0.0, optimizer="sgd")
MODEL = "test_resnet"  # timm's 0.4 M-parameter ResNet with BatchNorm: the same code paths as resnet18, ~10x faster
# Tolerance of the gradient match, as a fraction of the largest gradient component. The all-reduce's (g0 + g1) / 2
# and the reference's accumulated g0 / 2 + g1 / 2 round identically, so what remains is float32 summation order
# inside the kernels: with the reference on the ranks' one thread the match measured exactly 0 here; on 2 threads
# (another reduction order in the first conv's weight gradient) 7.5e-6. 1e-5 admits that and is 1e5x below what
# per-rank instead of full-batch BatchNorm statistics change (0.98, checked below), or a summed instead of averaged
# gradient (1.0) would.
GRAD_RTOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make(store, counts, run_dir, recipe=TINY, dist=SINGLE, **kw):
    from bench.training.trainer import Trainer
    from zoo import create_model
    torch.manual_seed(0)
    model, _ = create_model(MODEL, store.ds.num_classes, recipe.dropout, recipe.hidden, "none")
    return Trainer(model, recipe, store.split("train", 32, recipe.resize), store.split("val", 32, recipe.resize),
                   run_dir, counts, seed=0, size=32, progress=False, dist=dist, **kw)


def _rank_main(rank: int, world: int, port: int, root: str, out: str) -> None:
    """One rank of the spawned gloo group: record its first step, then run the resume check."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from conftest import assert_resume_equals_uninterrupted

    from bench.data import class_counts, open_dataset
    from bench.training.train import ImageStore
    dist = from_env("cpu")
    assert dist.enabled and dist.backend == "gloo" and dist.rank == rank
    ds = open_dataset(root)
    store = ImageStore(ds, "cpu", progress=False, dist=dist)
    counts = class_counts(ds.splits["train"].labels, ds.num_classes)  # the whole split's, on every rank
    out = os.path.join(out, "")

    tr = _make(store, counts, out + "step", STEP, dist)
    init = {k: v.clone() for k, v in tr.model.state_dict().items()}
    seen, real = {}, tr._step

    def capture(x, y):
        seen.update(x=x.clone(), y=y.clone())
        return real(x, y)

    tr._step = capture
    row = tr.train_epoch(max_steps=1)
    torch.save({"x": seen["x"], "y": seen["y"], "loss": row["train_loss"], "init": init, "rows": store.rows("train"),
                "local_batch": tr.local_batch,
                "grads": {n: p.grad.clone() for n, p in tr.model.named_parameters()},
                "params": {n: p.detach().clone() for n, p in tr.model.named_parameters()}}, f"{out}rank{rank}.pt")

    assert_resume_equals_uninterrupted(lambda d, **kw: _make(store, counts, d, dist=dist, **kw),
                                       Path(out + "resume"), rtol=1e-5)
    dist.close()


def test_first_step_matches_one_process_and_resume_is_exact(tiny_root, tmp_path):
    import torch.multiprocessing as mp

    from bench.data import class_counts, open_dataset
    from bench.training.train import ImageStore
    mp.spawn(_rank_main, args=(2, _free_port(), str(tiny_root), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    # each rank held only its shard: disjoint, together the whole split, and its batch came from it
    rows = [r["rows"] for r in ranks]
    assert not set(rows[0]) & set(rows[1]) and sorted([*rows[0], *rows[1]]) == list(range(120))
    assert all(len(r["x"]) == r["local_batch"] == 8 for r in ranks)

    ds = open_dataset(tiny_root)
    store = ImageStore(ds, "cpu", progress=False)
    counts = class_counts(ds.splits["train"].labels, ds.num_classes)
    x = torch.cat([r["x"] for r in ranks])  # the global batch: rank 0's images, then rank 1's, as augmented there
    y = torch.cat([r["y"] for r in ranks])

    def one_step(micro_batch: int):
        ref = _make(store, counts, tmp_path / "ref", STEP)
        ref.model.load_state_dict(ranks[0]["init"])
        ref.micro_batch = micro_batch
        ref.model.train()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the ranks' thread count: the same kernels, the same summation order
        try:
            loss = float(ref._step(x, y))
        finally:
            torch.set_num_threads(threads)
        return loss, {n: p.grad for n, p in ref.model.named_parameters()}, dict(ref.model.named_parameters())

    loss, grads, params = one_step(micro_batch=8)  # per-rank BatchNorm statistics, as under DDP
    ddp = ranks[0]
    scale = max(float(g.abs().max()) for g in grads.values())
    worst = max(float((ddp["grads"][n] - g).abs().max()) for n, g in grads.items())
    assert worst <= GRAD_RTOL * scale, f"max |grad diff| {worst:.3g} vs max |grad| {scale:.3g}"
    for n, p in params.items():  # and so the first update: identical weights on both ranks and in the reference
        assert torch.allclose(ddp["params"][n], p, rtol=1e-5, atol=1e-6), n
        assert torch.equal(ranks[0]["params"][n], ranks[1]["params"][n]), n
    # the loss both ranks log for that step is the global batch's (the mean of the ranks' local means)
    assert ranks[0]["loss"] == ranks[1]["loss"] == pytest.approx(loss, rel=1e-5)

    _, full_bn, _ = one_step(micro_batch=16)  # full-batch BatchNorm statistics: a different step
    bn_gap = max(float((ddp["grads"][n] - g).abs().max()) for n, g in full_bn.items())
    assert bn_gap > 1000 * GRAD_RTOL * scale, f"BatchNorm statistics changed the gradient by only {bn_gap:.3g}"
    print(f"DDP vs ghost-BN reference: max |grad diff| / max |grad| = {worst / scale:.2e}; "
          f"vs full-batch BN: {bn_gap / scale:.2e}")


def test_torchrun_trains_one_model_and_writes_one_set_of_artifacts(tiny_root, tmp_path):
    out = tmp_path / "out"  # not named runs/: the leaderboard goes to OUT/_report/
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "bench.run",
           "--models", MODEL, "--data", str(tiny_root), "--out", str(out), "--size", "32", "--epochs", "2",
           "--batch-size", "16", "--pretrained", "none", "--no-progress", "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("epoch   1/2") == 1  # rank 1 prints nothing: one log, as from one process
    d = out / "default" / MODEL
    assert sorted(p.name for p in out.iterdir()) == ["_report", "default"]
    assert sorted(p.name for p in d.iterdir()) == ["best.pt", "curves.png", "history.csv", "last.pt",
                                                    "probs_test.npz", "probs_val.npz", "run.json"]
    assert (out / "_report" / "leaderboard.md").exists()
    meta = json.loads((d / "run.json").read_text())
    assert meta["status"] == "done" and meta["distributed"] == {"world_size": 2, "backend": "gloo",
                                                               "batch_per_process": 8}
    assert meta["batch_size_final"] == 16 and meta["epochs_run"] == 2

    # the probabilities are the whole split in its order, as one process predicts them with the saved weights
    from bench.data import open_dataset
    from bench.data.images import load_images
    from bench.training.trainer import Split, predict
    from zoo import create_model
    ds = open_dataset(tiny_root)
    val = np.load(d / "probs_val.npz")
    assert val["plain"].shape == (40, 26) and np.array_equal(val["labels"], ds.splits["val"].labels)
    assert np.load(d / "probs_test.npz")["plain"].shape == (30, 26)
    model, _ = create_model(MODEL, ds.num_classes, TINY.dropout, 0, "none")
    model.load_state_dict(torch.load(d / "best.pt", weights_only=False)["model"])
    policy = meta["config"]["recipe"]["resize"]
    x = Split.from_numpy(load_images(ds.files("val"), 32, policy, progress=False), None, "cpu").x
    assert np.allclose(predict(model, x, 64).numpy(), val["plain"], atol=1e-5)

    # the same command again: rank 0 finds it finished, every rank agrees, nothing is retrained
    mtime = (d / "best.pt").stat().st_mtime_ns
    again = subprocess.run([*cmd, "--no-report"], capture_output=True, text=True, timeout=300, env={**os.environ})
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr[-3000:]
    assert (d / "best.pt").stat().st_mtime_ns == mtime


def test_shards_are_disjoint_balanced_random_samples():
    for n, world in ((120, 2), (41, 4), (3, 4), (0, 2)):
        parts = [shard_indices(n, r, world) for r in range(world)]
        assert sorted(np.concatenate(parts).tolist()) == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        assert all((np.diff(p) > 0).all() for p in parts)  # ascending: the split's own order within a shard
    first = shard_indices(1000, 0, 2)
    assert 200 < int((first < 500).sum()) < 300  # a random half, not the first 500 nor every other row
    assert not np.array_equal(first, np.arange(0, 1000, 2))
    assert np.array_equal(shard_indices(5, 0, 1), np.arange(5))  # one process: every row, in order


def test_a_batch_that_does_not_split_evenly_is_refused_with_the_fix():
    check_batch(32, 4)
    check_batch(30, 1)
    with pytest.raises(ValueError, match=r"batch size 30 does not split evenly over 4 processes.*--batch-size 28 or 32"):
        check_batch(30, 4)
    with pytest.raises(ValueError, match=r"--batch-size 4 \(a multiple of 4\)"):
        check_batch(3, 4)


def test_detection_needs_torchrun_and_a_device_torchrun_can_assign(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert from_env("auto") is SINGLE
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert from_env("cpu") is SINGLE  # torchrun --nproc-per-node 1: a plain single-process run
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match="under torchrun each process uses cuda:LOCAL_RANK"):
        from_env("cuda:1")
    monkeypatch.delenv("RANK")
    with pytest.raises(ValueError, match="RANK/LOCAL_RANK are missing"):
        from_env("cpu")
