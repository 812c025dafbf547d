"""Training-throughput benchmark (the library behind `python -m bench.speed`), three ways on the same data and model:

  (a) seed-style loop: PIL decode + torchvision transforms in DataLoader workers, fp32, batch 32 (what the public
      notebooks do);
  (b) this trainer: resident uint8 data, batched augmentation on the device, bf16 autocast on CUDA, channels_last;
  (c) the trainer's own step (model, loss, optimizer, same precision, batch and compile setting as (b)) on one fixed,
      already augmented batch: the ceiling for (b).

    python -m bench.speed --models resnet50,effb3 [--data ROOT] [--steps 50] [--compile off,on]

Prints images/s and the ratios, and writes a Markdown table to reports/speed-<device>.md.
Reference (issue #3, one H100, PyTorch 2.11): seed-style 729 img/s (ResNet-50 @224), 350 img/s (EfficientNet-B3 @300);
model-only 3976 and 1369 img/s. Targets: (b) >= 0.95x (c) and >= 5x (a) for ResNet-50.
"""
from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from bench.data import class_counts, open_dataset, resolve_root
from bench.data.images import load_images
from bench.training.trainer import Split, Trainer, device_name, pick_device, seed_everything
from zoo import create_model, get_entry, get_recipe


class SeedStyleDataset(Dataset):
    """What the seed notebooks do: open the JPEG and run torchvision transforms per image, per epoch."""

    def __init__(self, files, labels, size):
        self.files, self.labels = files, torch.from_numpy(labels)
        # the notebooks' pipeline; pixels stay 0..1 here and are scaled to the 0..255 the model expects (it
        # normalises itself) on the device, one multiply per batch
        self.tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.RandomRotation(10),
                             T.ColorJitter(0.2, 0.2, 0.2), T.ToTensor()])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            return self.tf(im.convert("RGB")), self.labels[i]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_style(name, ds, size, device, steps, warmup, workers) -> float:
    model, _ = create_model(name, ds.num_classes, pretrained="none")
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    loader = DataLoader(SeedStyleDataset(ds.files("train"), ds.splits["train"].labels, size), batch_size=32,
                        shuffle=True, num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    ce = torch.nn.CrossEntropyLoss()
    seen, t0 = 0, None
    while True:
        for i, (x, y) in enumerate(loader):
            if seen == 0 and i == warmup:
                _sync(device)
                t0, seen = time.perf_counter(), 0
            x, y = x.to(device, non_blocking=True) * 255, y.to(device, non_blocking=True)
            loss = sum(ce(z, y[:, a]) for a, z in enumerate(model(x)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if t0 is not None:
                seen += len(x)
                if seen >= steps * 32:
                    _sync(device)
                    return seen / (time.perf_counter() - t0)


def make_trainer(name, ds, size, device, images, batch_size, tmp, compile="off"):
    recipe = get_recipe(get_entry(name).recipe).updated(batch_size=batch_size, pretrained="none")
    train = Split.from_numpy(images, ds.splits["train"].labels, device)
    seed_everything(0)
    model, _ = create_model(name, ds.num_classes, recipe.dropout, recipe.hidden, "none")
    counts = class_counts(ds.splits["train"].labels, ds.num_classes)
    return Trainer(model, recipe, train, train, tmp, counts, size=size, progress=False, persist=False,
                   compile=compile)


def trainer_speed(tr: Trainer, steps, warmup) -> float:
    tr.train_epoch(max_steps=warmup)
    return tr.train_epoch(max_steps=steps)["img_per_s"]


def model_only(tr: Trainer, steps, warmup) -> float:
    """The trainer's own step (model, loss, optimizer, EMA) on one fixed, already augmented batch."""
    idx = torch.arange(tr.batch_size, device=tr.device)
    x, y = tr.augment_batch(idx), tr.train.y[idx]
    tr.model.train()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(tr.device)
            t0 = time.perf_counter()
        tr._step(x, y)
    _sync(tr.device)
    return steps * len(x) / (time.perf_counter() - t0)


def measure(a) -> list[dict]:
    """The three loops for every model in `a.models` (parsed bench.speed arguments); writes the table."""
    device = pick_device()
    cuda = device.type == "cuda"
    steps, warmup = a.steps or (50 if cuda else 4), a.warmup if a.warmup is not None else (10 if cuda else 1)
    ds = open_dataset(resolve_root(a.data), check_images=False)
    if cuda:
        torch.backends.cudnn.benchmark = True
    rows = []
    for name in [m.strip() for m in a.models.split(",") if m.strip()]:
        size = a.size or (get_entry(name).size if cuda else 64)
        images = load_images(ds.files("train"), size, progress=False)
        bs = a.batch_size or get_recipe(get_entry(name).recipe).batch_size
        seed = seed_style(name, ds, size, device, steps, warmup, a.workers)
        for comp in [c.strip() for c in a.compile.split(",") if c.strip()]:
            with tempfile.TemporaryDirectory() as tmp:
                tr = make_trainer(name, ds, size, device, images, bs, Path(tmp), comp)
                t0 = time.perf_counter()
                fast = trainer_speed(tr, steps, warmup)  # the warm-up steps include any compilation
                first_s = time.perf_counter() - t0
                ceiling = model_only(tr, steps, warmup)
                compiled = tr.compiled
            del tr
            rows.append({"model": name, "size": size, "batch": bs, "compiled": compiled, "seed_style": seed,
                         "trainer": fast, "model_only": ceiling, "warmup_s": first_s})
            print(f"{name:>10} @{size}px {'compiled' if compiled else 'eager':>8}  seed-style {seed:8.1f} img/s | "
                  f"trainer {fast:8.1f} img/s (batch {bs}) | model-only {ceiling:8.1f} img/s | "
                  f"trainer/ceiling {fast / ceiling:.2f}x  trainer/seed {fast / seed:.2f}x  (warm-up {first_s:.0f} s)")
            if cuda:
                torch.cuda.empty_cache()
    write_table(rows, device, steps, a.out, a.argv)
    return rows


def write_table(rows, device, steps, out, argv) -> Path:
    dev = device_name(device)
    slug = re.sub(r"[^a-z0-9]+", "-", dev.lower()).strip("-")
    path = Path(out) / f"speed-{slug}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# Training throughput on {dev}", "",
             f"`python -m bench.speed {' '.join(argv or [])}`  (torch {torch.__version__}, {steps} timed steps, "
             f"{time.strftime('%Y-%m-%d')})", "",
             "| model | size | batch | step | seed-style img/s | trainer img/s | model-only img/s | trainer / ceiling "
             "| trainer / seed | warm-up s |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['size']} | {r['batch']} | {'compiled' if r['compiled'] else 'eager'} | "
                     f"{r['seed_style']:.1f} | {r['trainer']:.1f} | {r['model_only']:.1f} | "
                     f"{r['trainer'] / r['model_only']:.2f} | {r['trainer'] / r['seed_style']:.2f} | {r['warmup_s']:.0f} |")
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return path
