"""Throughput benchmark (the library behind `python -m bench.speed`): training and inference, side by side in one run.

Training, per model, size and candidate setting (precision fp32 | bf16 autocast, layout channels_last | contiguous
(NCHW), step eager | compiled, intra-op threads):
  (b) this trainer: resident uint8 data, batched augmentation on the device, its whole epoch loop;
  (c) the trainer's own step (model, loss, optimizer, EMA; same setting) on one fixed, already augmented batch: the
      ceiling for (b);
and once per model and size, at the first setting:
  (a) seed-style loop: PIL decode + torchvision transforms in DataLoader workers, fp32, batch 32 (what the public
      notebooks do).
Inference, per candidate: (b) the evaluation path (`predict` on resident uint8 images: float conversion, inference
mode, autocast) with the network in each form: `eager` (the trained module), `folded` (BatchNorm folded into the
convolutions, what evaluation and bench.predict run: trainer.inference_net), `compiled` (the folded network through
torch.compile with inductor's freezing, when --compile lists on), `onnx` (the same network exported and run in
onnxruntime, fp32, when the onnx extra is installed); (c) the network's forward alone on one prepared float batch.
The warm-up column is the seconds before timing starts (a compilation or an export included); with it and the
img/s the break-even is (warm-up s) / (1/slow - 1/fast) images.

    python -m bench.speed [--models tf_efficientnet_lite0,resnet18] [--size 64,128] [--precision fp32,bf16]
                          [--layout channels_last,contiguous] [--compile off,on] [--threads 1,2] [--mode train,infer]

Prints images/s, the ratios and the CPU's features (avx512_bf16, AMX), and writes a Markdown table to
reports/speed-<device>.md. Reference (issue #3, one H100, PyTorch 2.11): seed-style 729 img/s (ResNet-50 @224), 350
img/s (EfficientNet-B3 @300); model-only 3976 and 1369 img/s. Targets: (b) >= 0.95x (c) and >= 5x (a) for ResNet-50.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from bench.data import class_counts, open_dataset, resolve_root
from bench.data.images import load_images
from bench.training import precision as numerics_
from bench.training.augment import to_input
from bench.training.trainer import Split, Trainer, device_name, inference_net, pick_device, predict, seed_everything
from zoo import create_model, get_entry, get_recipe

DEFAULT_MODELS = {"cpu": "tf_efficientnet_lite0,resnet18", "cuda": "resnet50,effb3"}
DEFAULT_SIZES = {"cpu": "64,128"}  # the demo's size and fashion-dev's; CUDA: each model's zoo size


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


def make_trainer(name, ds, size, device, images, batch_size, tmp, compile="off", precision=None, layout=None):
    recipe = get_recipe(get_entry(name).recipe).updated(batch_size=batch_size, pretrained="none")
    train = Split.from_numpy(images, ds.splits["train"].labels, device)
    seed_everything(0)
    model, _ = create_model(name, ds.num_classes, recipe.dropout, recipe.hidden, "none")
    counts = class_counts(ds.splits["train"].labels, ds.num_classes)
    return Trainer(model, recipe, train, train, tmp, counts, size=size, progress=False, persist=False,
                   compile=compile, precision=precision, layout=layout)


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


@contextlib.contextmanager
def threads(n: int | None):
    """torch's intra-op threads set to `n` for the block (None: unchanged)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _timed(run, steps: int, warmup: int, device) -> tuple[float, float]:
    """(seconds of the warm-up calls, seconds per timed call) of `run()`."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        run()
    _sync(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        run()
    _sync(device)
    return t1 - t0, (time.perf_counter() - t1) / max(steps, 1)


def compiled_for_inference(net: torch.nn.Module) -> torch.nn.Module:
    """The network through torch.compile, compiled at its first call; call it inside `freezing()` (the fastest PyTorch
    inference measured in issue #42)."""
    return torch.compile(net, dynamic=False)


def freezing():
    """Inductor's freezing for the compilations inside the block (weights become constants: Conv+BN folding, weight
    prepacking), nowhere else."""
    import torch._inductor.config as inductor_config
    return inductor_config.patch(freezing=True)


def onnx_session(net: torch.nn.Module, size: int, n_threads: int):
    """(an onnxruntime session of `net` exported as bench.export does (uint8 NHWC in, one probability tensor per
    attribute out), seconds the export took), or (None, reason) without the onnx extra."""
    from bench.inference.engines import onnx_missing
    if onnx_missing():
        return None, onnx_missing()
    import types

    import onnxruntime as ort

    from bench.inference.onnx_export import OPSET, PlanGraph
    plan = types.SimpleNamespace(views=["plain"], combine="mean", num_classes=list(net.num_classes),
                                 weights=np.ones(1))
    graph = PlanGraph(plan, [[net]]).eval()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.onnx"
        torch.onnx.export(graph, (torch.zeros((2, size, size, 3), dtype=torch.uint8),), str(path),
                          input_names=["images"], opset_version=OPSET, dynamo=True, external_data=False,
                          dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, verbose=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = n_threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, time.perf_counter() - t0


def inference_rows(name, ds, size, device, images, bs, steps, warmup, settings, forms) -> list[dict]:
    """Inference img/s of each (precision, layout, threads) setting and network form (eager, folded, compiled,
    onnx): the evaluation path on resident uint8 images, and the forward alone on a prepared float batch."""
    seed_everything(0)
    model, _ = create_model(name, ds.num_classes, pretrained="none")
    model.to(device).eval()
    x8 = torch.from_numpy(images[:bs * max(steps, 1)]).permute(0, 3, 1, 2).contiguous().to(device)
    n_img = len(x8)
    rows = []
    for (prec, layout, n_threads), form in itertools.product(settings, forms):
        if form == "onnx" and (prec != "fp32" or layout != "channels_last" or device.type != "cpu"):
            continue  # the graph is fp32 and has its own layout; onnxruntime on the CPU
        with threads(n_threads if device.type == "cpu" else None) as used:
            numerics = numerics_.decide(device, prec, layout)
            row = {"model": name, "size": size, "batch": bs, "mode": "infer", "precision": prec, "layout": layout,
                   "step": form, "threads": used}
            if form == "onnx":
                session, export_s = onnx_session(model.cpu(), size, used)
                model.to(device)
                if session is None:
                    print(f"{name:>22} @{size}px infer onnx: skipped ({export_s})")
                    continue
                feed = images[:bs]
                ws, per = _timed(lambda: session.run(None, {"images": feed}), steps, warmup, device)
                row.update(trainer=bs / per, model_only=bs / per, warmup_s=export_s + ws)
            else:
                net = model.to(memory_format=numerics.memory_format)
                if form in ("folded", "compiled"):
                    net = inference_net(model).to(memory_format=numerics.memory_format)
                t0 = time.perf_counter()
                if form == "compiled":
                    net = compiled_for_inference(net)  # compiles at its first call: inside the warm-up
                xb = to_input(x8[:bs]).contiguous(memory_format=numerics.memory_format)

                def forward():
                    with torch.inference_mode(), numerics.autocast():
                        net(xb)
                with freezing() if form == "compiled" else contextlib.nullcontext():
                    _, per = _timed(forward, steps, max(warmup, 1 if form == "compiled" else 0), device)
                    warm_s = time.perf_counter() - t0 - per * steps
                    _, per_eval = _timed(lambda: predict(net, x8, bs, precision=prec), 1, 1, device)
                row.update(trainer=n_img / per_eval, model_only=bs / per, warmup_s=warm_s)
        rows.append(row)
        report(row)
    return rows


def training_rows(name, ds, size, device, images, bs, steps, warmup, settings, compiles) -> list[dict]:
    rows = []
    for (prec, layout, n_threads), comp in itertools.product(settings, compiles):
        with threads(n_threads if device.type == "cpu" else None) as used, tempfile.TemporaryDirectory() as tmp:
            tr = make_trainer(name, ds, size, device, images, bs, Path(tmp), comp, prec, layout)
            t0 = time.perf_counter()
            fast = trainer_speed(tr, steps, warmup)  # the warm-up steps include any compilation
            first_s = time.perf_counter() - t0 - tr.batch_size * steps / fast
            ceiling = model_only(tr, steps, warmup)
            row = {"model": name, "size": size, "batch": tr.batch_size, "mode": "train", "precision": prec,
                   "layout": layout, "step": "compiled" if tr.compiled else "eager", "threads": used,
                   "trainer": fast, "model_only": ceiling, "warmup_s": first_s}
            del tr
        rows.append(row)
        report(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def report(r: dict) -> None:
    what = "trainer" if r["mode"] == "train" else "eval path"
    print(f"{r['model']:>22} @{r['size']}px {r['mode']:>5} {r['precision']:>4} {r['layout']:>13} {r['step']:>8} "
          f"{r['threads']:>2} thr | {what} {r['trainer']:8.1f} img/s | model-only {r['model_only']:8.1f} img/s | "
          f"{r['trainer'] / r['model_only']:.2f}x ceiling | warm-up {r['warmup_s']:.1f} s", flush=True)


def _list(text: str | None, default: str) -> list[str]:
    return [v.strip() for v in (text or default).split(",") if v.strip()]


def measure(a) -> list[dict]:
    """Every measurement of the parsed bench.speed arguments `a`; writes the table; returns the rows."""
    device = pick_device(getattr(a, "device", None) or "auto")
    cuda = device.type == "cuda"
    kind = "cuda" if cuda else "cpu"
    steps, warmup = a.steps or (50 if cuda else 4), a.warmup if a.warmup is not None else (10 if cuda else 1)
    features = numerics_.cpu_features()
    native = cuda or numerics_.native_bf16(features)
    precisions = _list(a.precision, "fp32,bf16" if native else "fp32")
    layouts = _list(a.layout, "channels_last" if cuda else "channels_last,contiguous")
    # default: the thread count the suite's commands use (precision.apply_threads: physical cores, unless the
    # environment sets one)
    given = any(os.environ.get(v) for v in numerics_.THREAD_ENV)
    default_threads = str(torch.get_num_threads() if given else features["physical_cores"])
    threads_ = [int(t) for t in _list(a.threads, default_threads)] if not cuda else [None]
    modes = _list(a.mode, "train,infer")
    compiles = _list(a.compile, "off")
    for p in precisions:
        numerics_.check(p)
    for lay in layouts:
        if lay not in numerics_.LAYOUTS:
            raise ValueError(f"--layout {lay}: one of {', '.join(numerics_.LAYOUTS)}")
    forms = ["eager", "folded", *(["compiled"] if "on" in compiles else []), *(["onnx"] if not cuda and getattr(a, "onnx", True) else [])]
    print(f"[speed] {device_name(device)}; CPU: {numerics_.describe_features(features)}; torch {torch.__version__}; "
          f"{steps} timed steps after {warmup} warm-up")
    ds = open_dataset(resolve_root(a.data), check_images=False)
    if cuda:
        torch.backends.cudnn.benchmark = True
    settings = list(itertools.product(precisions, layouts, threads_))
    rows = []
    for name in _list(a.models, DEFAULT_MODELS[kind]):
        sizes = [int(s) for s in _list(a.size, DEFAULT_SIZES.get(kind, str(get_entry(name).size)))]
        for size in sizes:
            images = load_images(ds.files("train"), size, progress=False)
            bs = a.batch_size or get_recipe(get_entry(name).recipe).batch_size
            if "train" in modes:
                seed = seed_style(name, ds, size, device, steps, warmup, a.workers) if a.seed_style else None
                got = training_rows(name, ds, size, device, images, bs, steps, warmup, settings, compiles)
                for r in got:
                    r["seed_style"] = seed
                if seed:
                    print(f"{name:>22} @{size}px seed-style {seed:8.1f} img/s (fp32, batch 32, {a.workers} workers)")
                rows += got
            if "infer" in modes:
                rows += inference_rows(name, ds, size, device, images, bs, steps, warmup, settings, forms)
    write_table(rows, device, steps, a.out, a.argv, features)
    return rows


def baseline_of(r: dict, rows: list[dict]) -> dict | None:
    """The row the suite's defaults before issue #42 would give for r's model, size and mode: fp32, channels_last,
    eager (inference: the unfolded network), the first thread count measured."""
    same = [b for b in rows if (b["model"], b["size"], b["mode"]) == (r["model"], r["size"], r["mode"])]
    first = same[0]["threads"] if same else None
    return next((b for b in same if b["precision"] == "fp32" and b["layout"] == "channels_last"
                 and b["step"] == "eager" and b["threads"] == first), None)


def break_even(r: dict, rows: list[dict]) -> str:
    """For a compiled or onnx row: after how many images its warm-up is repaid against the same setting's default
    step (training: eager; inference: folded, what evaluation runs), or `never` when it is not faster; '' for others."""
    if r["step"] not in ("compiled", "onnx"):
        return ""
    ref_step = "eager" if r["mode"] == "train" else "folded"
    key = ("model", "size", "mode", "precision", "layout", "threads")
    ref = next((b for b in rows if b["step"] == ref_step and all(b[k] == r[k] for k in key)), None)
    if ref is None:
        return ""
    gain = 1 / ref["trainer"] - 1 / r["trainer"]  # seconds saved per image
    if gain <= 0:
        return "never"
    return f"{max(r['warmup_s'] - ref['warmup_s'], 0) / gain:.0f}"


def write_table(rows, device, steps, out, argv, features=None) -> Path:
    dev = device_name(device)
    slug = re.sub(r"[^a-z0-9]+", "-", dev.lower()).strip("-")
    path = Path(out) / f"speed-{slug}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    features = features or numerics_.cpu_features()
    lines = [f"# Throughput on {dev}", "",
             f"`python -m bench.speed {' '.join(argv or [])}`  (torch {torch.__version__}, {steps} timed steps, "
             f"{time.strftime('%Y-%m-%d')}; CPU: {numerics_.describe_features(features)})", "",
             "train: *trainer* is the trainer's epoch loop, *model-only* its step on one fixed augmented batch (the "
             "ceiling). infer: *trainer* is the evaluation path (`predict` on uint8 images), *model-only* the forward "
             "alone. *vs default* divides by the row of the defaults before issue #42 (fp32, channels_last, eager). "
             "Warm-up: seconds before timing (compilation or export included). Break-even: images after which a "
             "compiled or onnx row's extra warm-up is repaid against the same setting's eager (training) or folded "
             "(inference) row (divide by the training split's size for epochs).", "",
             "| model | size | batch | mode | precision | layout | step | threads | seed-style img/s | trainer img/s "
             "| model-only img/s | trainer / ceiling | vs default | warm-up s | break-even images |",
             "| --- | ---: | ---: | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        base = baseline_of(r, rows)
        vs = f"{r['trainer'] / base['trainer']:.2f}" if base else "-"
        seed = f"{r['seed_style']:.1f}" if r.get("seed_style") else "-"
        lines.append(f"| {r['model']} | {r['size']} | {r['batch']} | {r['mode']} | {r['precision']} | {r['layout']} "
                     f"| {r['step']} | {r['threads'] or '-'} | {seed} | {r['trainer']:.1f} | {r['model_only']:.1f} | "
                     f"{r['trainer'] / r['model_only']:.2f} | {vs} | {r['warmup_s']:.1f} | {break_even(r, rows)} |")
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return path
