"""GPU tier: run where CUDA is available (scripts/gpu_reference.sh runs it on the GPU machine); skipped elsewhere.

    python -m pytest -q -m cuda tests/test_cuda.py
"""
import pytest
from conftest import assert_resume_equals_uninterrupted, build_trainer
import torch

from bench.training.augment import augment
from bench.data import class_counts
from bench.training.trainer import Split, Trainer, predict
from zoo import Recipe, create_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)")]
K = (7, 3, 3, 4, 6, 3)
TINY = Recipe(size=64, epochs=4, batch_size=32, warmup_epochs=1, pretrained="none", ema=True)


def make_trainer(root, run_dir, recipe=TINY, **kw):
    tr = build_trainer(root, run_dir, recipe, "cuda", 64, checkpoint_every=0, **kw)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True  # comparable runs
    return tr


def test_resume_on_cuda_equals_an_uninterrupted_run(tiny_root, tmp_path):
    assert_resume_equals_uninterrupted(lambda d, **kw: make_trainer(tiny_root, d, **kw), tmp_path, rtol=1e-4)


def test_forced_out_of_memory_recovers_and_finishes(tmp_path):
    """A memory cap that fits the model but not a batch of 512 at 160 px: the step is split, training finishes."""
    torch.cuda.empty_cache()
    n, size = 1024, 160
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8).numpy().transpose(0, 2, 3, 1)
    y = torch.stack([torch.randint(0, k, (n,)) for k in K], 1).numpy()
    train = Split.from_numpy(x, y, "cuda")
    model, _ = create_model("resnet18", K, pretrained="none")
    recipe = Recipe(size=size, epochs=1, batch_size=512, pretrained="none")
    tr = Trainer(model, recipe, train, train, tmp_path, class_counts(y, K), size=size, progress=False,
                 persist=False)
    total = torch.cuda.get_device_properties(0).total_memory
    cap = torch.cuda.memory_allocated() + 1.5 * 2**30  # weights, data and optimizer fit; 512 images do not
    torch.cuda.set_per_process_memory_fraction(min(0.9, cap / total))
    try:
        hist = tr.fit()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert hist[0]["batch_size"] == 512 and hist[0]["micro_batch"] < 512
    assert torch.isfinite(torch.tensor(hist[0]["train_loss"]))


def test_training_step_never_waits_for_the_host(tiny_root, tmp_path):
    tr = make_trainer(tiny_root, tmp_path, TINY.updated(epochs=1))
    r = tr.recipe
    idx = torch.arange(32, device="cuda")
    tr._step(augment(tr.train.x[idx], tr.gen, r.crop_scale, r.hflip, r.rotate, r.jitter), tr.train.y[idx])  # warm
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in tr._batches():
            x = augment(tr.train.x[batch], tr.gen, r.crop_scale, r.hflip, r.rotate, r.jitter)
            tr._step(x, tr.train.y[batch])
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_bf16_predictions_agree_with_fp32(tiny_root, tmp_path):
    tr = make_trainer(tiny_root, tmp_path, TINY.updated(epochs=2, ema=False))
    tr.fit()
    bf16 = predict(tr.model, tr.val.x, 64)  # auto: bf16 on CUDA (bench/training/precision.py)
    fp32 = predict(tr.model, tr.val.x, 64, precision="fp32")
    assert (bf16 - fp32).abs().max() < 0.05  # bf16 keeps ~3 significant digits through ~20 layers
    parts = lambda p: torch.stack([q.argmax(1) for q in torch.split(p, list(K), 1)], 1)  # noqa: E731
    assert (parts(bf16) == parts(fp32)).float().mean() > 0.97
