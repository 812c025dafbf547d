"""The one trainer every backbone goes through.

Fast path (CUDA): the decoded dataset sits on the GPU as uint8, batches are gathered and augmented there
(augment.py), the model normalises its own input (zoo/multihead.py) and runs in the precision and layout that
bench/training/precision.py decides per device (CUDA: bf16 autocast; CPU: fp32, bf16 with --precision bf16; both
channels_last), optionally through torch.compile. Nothing in a training step waits for the host: the loss is checked
for NaN/inf once per epoch. The same code runs on the CPU. Evaluation (`predict`) runs in inference mode on a copy
with BatchNorm folded into the convolutions (`inference_net`).

Data larger than memory (data mode `stream`, `Split.x` a MappedImages): the decoded splits stay in their
memory-mapped cache files and each batch's rows are read from them, by a host thread one batch ahead while the
current batch trains; on CUDA they go through pinned staging buffers and are copied non_blocking on a side stream,
which the compute stream waits for (the host waits only for the copy of two batches ago before reusing its buffer).
The rows are the resident tensor's, so both modes give the same numbers (bit for bit on the CPU).

Resume: the full state (model, optimizer, scheduler, EMA, loss weights, RNGs, history) is written atomically to
`last.pt` at the first epoch boundary after `checkpoint_every` seconds have passed since the last save; by default
that interval is 50x the measured cost of one save, so checkpointing costs < 2% of training time. State exists only
at epoch boundaries, so a kill -9 loses less than that interval plus one epoch. Ctrl-C between epochs, and the end of
training, always save. The same call resumes from it, bit for bit (state is loaded on the CPU, so RNG states restore
on any device). `best.pt` is written at every improvement, so a kill can leave it from an epoch after last.pt's: the
state carries the selected epoch's weights and resuming puts them back in best.pt (`reconcile_best`). Tune trials
(`persist=False`) write no state at all: a killed trial is re-run from scratch by the tuner, and the best weights
stay in memory.

Out of memory: a CUDA OOM in a training step splits that step into micro-batches (half the size each time) with
gradient accumulation, so the effective batch, the learning rate and the schedule stay the recipe's; below
`min_micro_batch` images it stops with a clear message. A non-finite loss stops with its epoch and step.

Data parallel (`dist`, see distributed.py): the model is wrapped in DistributedDataParallel, each process trains on
batch_size / N images of its own resident shard per step, micro-batches after an OOM accumulate locally and
all-reduce once per step (`no_sync`), validation and test probabilities are gathered into the split's order, and
only rank 0 writes files. With `dist` left at its default nothing of this runs.
"""
from __future__ import annotations

import contextlib
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import timm.optim
import timm.utils
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bench import checkpoints
from bench.artifacts import atomic_write
from bench.training.augment import augment, to_input
from bench.training.distributed import SINGLE, Dist, check_batch
from bench.training.losses import MultiAttributeLoss
from bench.training.precision import decide
from bench.training.schedules import create_schedule
from bench.metrics import score
from zoo import Recipe, count_params

SELECT_MODES = {"overall_acc": "max", "class_avg_acc": "max", "mean_class_acc": "max", "val_loss": "min",
                "last": "max"}


from bench.errors import ConfigMismatch, NonFiniteLoss, OutOfMemory  # noqa: E402,F401  (re-exported)


class MappedImages:
    """Decoded uint8 images that stay in memory-mapped cache files (bench/data/images.py) and are read by row: the
    `stream` data mode, for datasets larger than memory. It stands in for a split's resident (N, 3, S, S) uint8
    tensor: indexing with a slice or with rows (a tensor or array) gathers those rows from the files and returns them
    as one channels-first uint8 tensor on `device`, equal to the resident tensor's rows. On CUDA the rows go through
    a pinned host staging buffer (two, used in turn) and are copied non_blocking on a side stream, which the compute
    stream waits for. `parts` are (memory-mapped NHWC array, its rows or None for all), concatenated in order (a
    k-fold split is rows of train followed by rows of val)."""

    def __init__(self, parts: list[tuple[np.ndarray, np.ndarray | None]], device):
        self.parts = [(a, None if r is None else np.asarray(r, dtype=np.int64)) for a, r in parts]
        self.starts = np.cumsum([0, *(len(a) if r is None else len(r) for a, r in self.parts)])
        side = self.parts[0][0].shape[1]
        self.shape = torch.Size((int(self.starts[-1]), 3, side, side))
        self.device, self.dtype = torch.device(device), torch.uint8
        self._slots: list[list] = []  # CUDA: [pinned buffer, event of its last copy]
        self._turn = 0

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows `idx` (positions in this split), NHWC uint8 in host memory, read from the files."""
        idx = np.asarray(idx, dtype=np.int64)
        if len(self.parts) == 1:
            a, r = self.parts[0]
            return a[idx if r is None else r[idx]]
        out = np.empty((len(idx), *self.parts[0][0].shape[1:]), dtype=np.uint8)
        part = np.searchsorted(self.starts, idx, side="right") - 1
        for p, (a, r) in enumerate(self.parts):
            m = part == p
            if m.any():
                local = idx[m] - self.starts[p]
                out[m] = a[local if r is None else r[local]]
        return out

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            idx = np.arange(*key.indices(len(self)))
        elif isinstance(key, torch.Tensor):
            idx = key.cpu().numpy()
        else:
            idx = np.asarray(key)
        return self.to_device(self.rows(idx))

    def to_device(self, rows: np.ndarray) -> torch.Tensor:
        """NHWC host rows -> (n, 3, S, S) uint8 on the device (CUDA: through a pinned buffer, non_blocking)."""
        t = torch.from_numpy(rows).permute(0, 3, 1, 2)
        if self.device.type != "cuda":
            return t.contiguous()
        if not self._slots:
            self._copy_stream = torch.cuda.Stream(self.device)
            self._slots = [[None, torch.cuda.Event()] for _ in range(2)]
        slot = self._slots[self._turn]
        self._turn = 1 - self._turn
        slot[1].synchronize()  # this buffer's previous copy (two batches ago) has left it
        if slot[0] is None or len(slot[0]) < len(t):
            with torch.inference_mode(False):  # a normal tensor, reusable in training after `predict` made it
                slot[0] = torch.empty((max(len(t), 1), *t.shape[1:]), dtype=torch.uint8, pin_memory=True)
        buf = slot[0][:len(t)]
        buf.copy_(t)  # the channels-first layout is made here, in pinned memory
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            out = buf.to(self.device, non_blocking=True)
            slot[1].record(self._copy_stream)
        compute.wait_event(slot[1])
        out.record_stream(compute)
        return out

    def prefetch(self, batches) -> "Iterator[tuple[torch.Tensor, torch.Tensor]]":
        """(rows, their images on the device) for each batch of rows: a host thread reads batch k + 1 from the files
        while the caller trains on batch k (on CUDA its copy then overlaps the compute too). The rows of the whole
        epoch come to the host once, at the start (the one wait for the device per epoch)."""
        from concurrent.futures import ThreadPoolExecutor
        batches = list(batches)
        if not batches:
            return
        host = torch.cat(batches).cpu().numpy().reshape(len(batches), -1)  # batches are equal in size
        with ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(self.rows, host[0])
            for k, idx in enumerate(batches):
                rows = ahead.result()
                if k + 1 < len(batches):
                    ahead = pool.submit(self.rows, host[k + 1])
                yield idx, self.to_device(rows)


DATA_MODES = ("resident", "stream")


@dataclass
class Split:
    """One split's decoded images (N, 3, S, S) uint8 and labels (N, 6) on the training device. `x` is a resident
    tensor (data mode `resident`) or a MappedImages that reads rows from the memory-mapped cache files (`stream`);
    both give the same batches, so training and prediction give the same numbers in either mode.

    In data-parallel training a Split is one rank's shard: `index` holds the positions of its rows in the whole
    split and `total` the whole split's length (None and len(x) in a single process)."""
    x: "torch.Tensor | MappedImages"
    y: torch.Tensor | None
    index: torch.Tensor | None = None
    total: int | None = None

    def __post_init__(self):
        if self.total is None:
            self.total = len(self.x)

    @property
    def mode(self) -> str:
        return "stream" if isinstance(self.x, MappedImages) else "resident"

    @classmethod
    def from_numpy(cls, images: np.ndarray, labels: np.ndarray | None, device, index: np.ndarray | None = None,
                   total: int | None = None, mode: str = "resident") -> "Split":
        """`resident`: the images become one tensor on the device; `stream`: `images` (memory-mapped) stay where
        they are and batches are read from them."""
        if mode == "stream":
            x = MappedImages([(images, None)], device)
        else:
            x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
        y = torch.from_numpy(labels).to(device) if labels is not None else None
        pos = torch.from_numpy(np.asarray(index, dtype=np.int64)).to(device) if index is not None else None
        return cls(x, y, pos, total)


def pick_device(name: str = "auto") -> torch.device:
    """auto | cpu | cuda | cuda:N; ValueError with the reason when that device cannot be used here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name}: not a device name (auto, cpu, cuda, cuda:N)") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__}, "
                             f"{'a CPU-only build' if torch.version.cuda is None else 'no usable GPU'}); "
                             f"use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: only cpu and cuda devices are supported")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores)"


def autocast(device: torch.device, precision: str | None = None):
    """The autocast context of `device` under `precision` (default: the process's --precision), as decided by
    bench/training/precision.py: bf16 on CUDA, fp32 on the CPU unless asked (or native bf16 once measured)."""
    return decide(device, precision).autocast()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def gflops(model: torch.nn.Module, size: int, device: torch.device) -> float:
    """Forward GFLOPs for one image (torch's FLOP counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    from zoo.fastpaths import padded_input
    was_training = model.training
    model.eval()
    with torch.no_grad(), padded_input(), FlopCounterMode(display=False) as counter:  # the model's own kernels
        model(torch.zeros(1, 3, size, size, device=device))
    model.train(was_training)
    return round(counter.get_total_flops() / 1e9, 3)


def inference_net(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of a MultiHeadNet for fast inference, equal to it within float rounding: its backbone's
    BatchNorms folded into their convolutions, channels_last (zoo/fastpaths.py `inference_copy`). Another module is
    returned as it is."""
    if not hasattr(model, "backbone"):
        return model
    from zoo.fastpaths import inference_copy
    return inference_copy(model)[0]


@torch.inference_mode()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int, flip: bool = False,
            view: Callable[[torch.Tensor], torch.Tensor] | None = None, precision: str | None = None) -> torch.Tensor:
    """Concatenated per-attribute softmax probabilities (N, sum(classes)), float32, for uint8 images x; `view` maps
    a uint8 batch to model input (a TTA view; default: the plain image, mirrored if `flip`). `precision`: fp32 |
    bf16 | auto (default: the process's --precision; bench/training/precision.py decides per device).
    Runs in inference mode (the probabilities cannot enter autograd). A CUDA out-of-memory error halves the batch
    and goes on from the batch that failed."""
    model.eval()
    numerics = decide(x.device, precision)
    out, i = [], 0
    while i < len(x):
        try:
            xb = view(x[i:i + batch_size]) if view else to_input(x[i:i + batch_size])
            if flip:
                xb = xb.flip(3)
            with numerics.autocast():
                logits = model(xb)
            out.append(torch.cat([z.float().softmax(-1) for z in logits], 1))
            i += batch_size
            continue
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
        batch_size //= 2  # outside the handler, so the failed batch's memory is already released
        torch.cuda.empty_cache()
    return torch.cat(out) if out else torch.empty(0)


def _atomic_save(obj, path: Path) -> None:
    checkpoints.save(obj, path)  # tensors and plain values only: read back by the restricted unpickler


def read_state(path: Path) -> dict:
    """A saved training state, always loaded on the CPU (RNG states must be CPU ByteTensors to be restored, and
    load_state_dict copies weights to wherever the model lives) by the restricted unpickler: a state that would
    need anything beyond tensors and plain values is refused (bench/checkpoints.py), never run."""
    return checkpoints.load(path)


def maybe_compile(model: torch.nn.Module, mode: str, device: torch.device) -> tuple[torch.nn.Module, bool]:
    """torch.compile for `on`, or `auto` on CUDA; the eager model where compilation is off or unavailable."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return model, False
    try:
        return torch.compile(model, dynamic=False), True  # batch shapes are constant: never trace symbolic sizes
    except Exception as e:  # e.g. no compiler toolchain: eager is always correct
        print(f"  torch.compile unavailable ({type(e).__name__}: {e}); training eagerly")
        return model, False


def param_groups(model: torch.nn.Module, recipe: Recipe) -> list[dict]:
    """Backbone and heads, each split into decayed weights and undecayed norms/biases (1-d tensors): the backbone's
    lr is lr x backbone_lr_scale, the heads' is lr. Every group's base lr is the recipe's, and the backbone's scale is
    its `lr_scale`, which timm's schedulers multiply into every value they set (warm-up start, cosine, floor): so at
    every step each group trains at its own lr x the same schedule factor (scale 0: a frozen backbone, lr 0
    throughout)."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        backbone, no_decay = name.startswith("backbone."), p.ndim <= 1
        g = groups.setdefault((backbone, no_decay), {
            "params": [], "lr": recipe.lr, "lr_scale": recipe.backbone_lr_scale if backbone else 1.0,
            "backbone": backbone, "weight_decay": 0.0 if no_decay else recipe.weight_decay})
        g["params"].append(p)
    return list(groups.values())


def scale_plateau_floor(scheduler, min_lr: float) -> None:
    """The plateau schedule (schedules.py, as timm's did) hands torch's ReduceLROnPlateau one floor for all groups and its default eps, under
    which a small lr stops shrinking while a larger one still does: give each group the floor x its lr_scale and
    reduce every group whenever one is, so the groups keep their lr ratio (a no-op for other schedules)."""
    inner = getattr(scheduler, "lr_scheduler", None)
    if isinstance(inner, torch.optim.lr_scheduler.ReduceLROnPlateau):
        inner.min_lrs = [min_lr * g.get("lr_scale", 1.0) for g in inner.optimizer.param_groups]
        inner.default_min_lr, inner.eps = None, 0.0


class Trainer:
    """Trains one MultiHeadNet on resident splits; `fit()` resumes from `run_dir/last.pt` when present."""

    def __init__(self, model: torch.nn.Module, recipe: Recipe, train: Split, val: Split, run_dir: Path,
                 class_counts: list, seed: int = 0, size: int = 224, progress: bool = True,
                 on_epoch: Callable[[int, dict], None] | None = None, checkpoint_every: float | None = None,
                 persist: bool = True, compile: str = "off", min_micro_batch: int = 8, dist: Dist = SINGLE,
                 precision: str | None = None, layout: str | None = None):
        if train.total == 0:
            raise ValueError("the training split is empty")
        self.dist = dist
        self.device = train.x.device
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # batch shapes are constant (ragged tail dropped): autotune once
        else:
            torch.set_flush_denormal(True)  # tiny gradients/moments of fine-tuned weights slow CPU math many-fold
        # precision (autocast) and layout for this device, and why (bench/training/precision.py; run.json records it)
        self.numerics = decide(self.device, precision, layout)
        self.model = model.to(self.device).to(memory_format=self.numerics.memory_format)
        self.recipe, self.train, self.val, self.size = recipe, train, val, size
        self.run_dir, self.seed, self.on_epoch = Path(run_dir), seed, on_epoch
        self.progress = progress and dist.main
        self.num_classes = model.num_classes
        check_batch(recipe.batch_size, dist.world)
        if train.total < dist.world:
            raise ValueError(f"the training split has {train.total} images, fewer than the {dist.world} processes")
        # global batch = the recipe's (or the whole split, rounded down to equal shares); each rank takes its share
        self.local_batch = min(recipe.batch_size, train.total) // dist.world
        self.batch_size = self.local_batch * dist.world
        self.micro_batch = self.local_batch  # < local_batch after an out-of-memory split
        self.min_micro_batch = min_micro_batch
        self.checkpoint_every, self.persist = checkpoint_every, persist
        self.ddp = None
        if dist.enabled:  # after .to(device); wrapping broadcasts rank 0's initial weights and buffers to all ranks
            from torch.nn.parallel import DistributedDataParallel
            self.ddp = DistributedDataParallel(self.model, device_ids=[self.device.index]
                                               if self.device.type == "cuda" else None)
        self.step_model, self.compiled = maybe_compile(self.ddp or self.model, compile, self.device)
        self.criterion = MultiAttributeLoss(class_counts, recipe.loss, recipe.loss_beta, recipe.focal_gamma,
                                            recipe.label_smoothing, recipe.task_weighting, recipe).to(self.device)
        opt = {"sgd": "momentum", "nesterov": "nesterov", "adamw": "adamw"}[recipe.optimizer]
        groups = param_groups(self.model, recipe)
        # history's `lr` is the heads' group (the recipe's lr), `backbone_lr` the backbone's
        self.lr_groups = {"lr": next(i for i, g in enumerate(groups) if not g["backbone"]),
                          "backbone_lr": next((i for i, g in enumerate(groups) if g["backbone"]), None)}
        self.optimizer = timm.optim.create_optimizer_v2(
            groups, opt=opt, lr=recipe.lr, weight_decay=recipe.weight_decay,
            **({"momentum": recipe.momentum} if opt in ("momentum", "nesterov") else {}))
        if self.criterion.log_vars is not None:
            self.optimizer.add_param_group({"params": [self.criterion.log_vars], "weight_decay": 0.0})
        self.scheduler = create_schedule(self.optimizer, recipe, self.steps_per_epoch, SELECT_MODES[recipe.select])
        scale_plateau_floor(self.scheduler, recipe.lr * recipe.lr_floor)
        self.ema = timm.utils.ModelEmaV3(self.model, decay=recipe.ema_decay) if recipe.ema else None
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(seed)
        self.history: list[dict] = []
        self.best: float | None = None
        self.best_epoch = 0
        self.best_weights: dict | None = None  # persist=False: the selected epoch's weights, kept in memory
        self.best_record: dict | None = None  # persist (rank 0): best.pt's contents on the CPU, for last.pt
        self.epoch = 0
        self.saved_epoch = -1
        self.save_s: float | None = None
        self.last_save = time.perf_counter()

    # --- state -----------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "epoch": self.epoch, "batch_size": self.batch_size, "micro_batch": self.micro_batch,
            "world_size": self.dist.world,
            "history": self.history, "best": self.best, "best_epoch": self.best_epoch,
            # the selected epoch's weights where they are not this state's own: best.pt is rewritten from them when a
            # kill left it from an epoch after this state's (see reconcile_best)
            "best_model": (self.best_record["model"] if self.best_record is not None
                           and self.best_epoch not in (0, self.epoch) else None),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "plateau": self._plateau_state(),
            "criterion": self.criterion.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "gen": self.gen.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None},
        }

    def _plateau_state(self) -> dict | None:
        """The plateau schedule's own counters (patience, cooldown, floors), which timm's state_dict leaves out."""
        inner = getattr(self.scheduler, "lr_scheduler", None)
        return inner.state_dict() if isinstance(inner, torch.optim.lr_scheduler.ReduceLROnPlateau) else None

    def load_state(self, st: dict) -> None:
        self.epoch, self.batch_size, self.history = st["epoch"], st["batch_size"], st["history"]
        check_batch(self.batch_size, self.dist.world)
        self.local_batch = self.batch_size // self.dist.world
        self.micro_batch = min(st.get("micro_batch", self.local_batch), self.local_batch)
        if st.get("world_size", 1) != self.dist.world and self.dist.main:
            print(f"  note: this state was saved by {st.get('world_size', 1)} process(es), resumed by "
                  f"{self.dist.world}: same global batch and schedule, another data order from here on")
        self.best, self.best_epoch = st["best"], st["best_epoch"]
        self.model.load_state_dict(st["model"])
        self.optimizer.load_state_dict(st["optimizer"])  # moves the moments to the parameters' device
        self.scheduler.load_state_dict(st["scheduler"])
        if st.get("plateau") is not None:  # states saved before it was kept restart the patience count
            self.scheduler.lr_scheduler.load_state_dict(st["plateau"])
        self.criterion.load_state_dict(st["criterion"])
        if self.ema and st["ema"] is not None:
            self.ema.load_state_dict(st["ema"])
        rng = st["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        np.random.set_state(checkpoints.numpy_rng_state(rng["numpy"]))
        random.setstate(rng["python"])
        self.gen.set_state(rng["gen"].cpu())
        if rng["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        self.saved_epoch = self.epoch

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    def save_last(self) -> None:
        t0 = time.perf_counter()
        _atomic_save(self.state(), self.last_path)
        self.save_s = time.perf_counter() - t0
        self.last_save, self.saved_epoch = time.perf_counter(), self.epoch

    def restore_last(self) -> bool:
        """Rank 0 reads the state and every rank gets it: all ranks resume from the same epoch, and only rank 0
        needs the run folder."""
        if not self.persist:
            return False
        st = self.dist.on_main(lambda: read_state(self.last_path) if self.last_path.exists() else None)
        if st is None:
            return False
        self.load_state(st)
        if self.dist.on_main(lambda: self.reconcile_best(st)):
            self.best, self.best_epoch = None, self.epoch  # selection starts again from the next epoch
        return True

    def reconcile_best(self, st: dict) -> bool:
        """Make best.pt the selected epoch of the state `st` just resumed (rank 0). best.pt is written at every
        improvement and last.pt only every checkpoint interval, so a kill can leave a best.pt from an epoch after
        last.pt's: the resumed run replays that epoch (differently on CUDA) and may never select it again, and
        best.pt, run.json's best_epoch and history.csv would disagree. True when the selected epoch's weights are
        lost (a state saved before last.pt carried them): the caller restarts the selection."""
        path = self.run_dir / "best.pt"
        disk = read_state(path) if path.exists() else None
        if self.best_epoch == 0:  # nothing selected yet (select=last before its last epoch)
            if disk is not None:
                print(f"  {path.name} held epoch {disk.get('epoch')}, which the interruption lost (state resumed: "
                      f"epoch {self.epoch}); removed")
                path.unlink()
            return False
        if disk is not None and disk.get("epoch") == self.best_epoch and disk.get("metric", self.best) == self.best:
            self.best_record = disk
            return False
        if st.get("best_model") is not None:
            weights = st["best_model"]
        elif self.best_epoch == self.epoch:
            weights = {k: v.detach().to("cpu", copy=True) for k, v in self.eval_model.state_dict().items()}
        else:
            print(f"  {path.name} does not hold epoch {self.best_epoch}, the selected epoch of the state resumed "
                  f"(epoch {self.epoch}), and that state does not carry its weights (saved by an older version): "
                  f"selecting again from epoch {self.epoch + 1} on")
            path.unlink(missing_ok=True)
            return True
        self.best_record = {"model": weights, "epoch": self.best_epoch, "metric": self.best}
        _atomic_save(self.best_record, path)
        print(f"  {path.name} held epoch {disk.get('epoch') if disk else None}, which the interruption lost (state "
              f"resumed: epoch {self.epoch}); rewritten with epoch {self.best_epoch}'s weights, the one selected")
        return False

    def checkpoint_interval(self) -> float:
        """Seconds between full-state saves: the user's, else 50x one save's cost (< 2% of training time)."""
        if self.checkpoint_every is not None:
            return self.checkpoint_every
        return 50 * (self.save_s or 0.0)

    def maybe_save(self, final: bool = False) -> None:
        if not self.persist or not self.dist.main or self.saved_epoch == self.epoch:
            return
        first = self.save_s is None
        if final or first or time.perf_counter() - self.last_save >= self.checkpoint_interval():
            self.save_last()
            if first:
                print(f"  checkpoint: full state ({self.last_path.name}) takes {self.save_s:.2f} s to save; saved at "
                      f"the first epoch boundary after {self.checkpoint_interval():.0f} s "
                      f"({'--checkpoint-every' if self.checkpoint_every is not None else '< 2% of training time'}); "
                      f"a kill loses less than that plus one epoch")

    # --- one epoch -------------------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (ragged tail dropped: constant shapes); the same on every rank, since a
        collective per step hangs if one rank takes a step more. floor(floor(N / W) / b) = floor(N / (W b))."""
        return (self.train.total // self.dist.world) // self.local_batch

    def _batches(self):
        n = len(self.train.x)
        perm = torch.randperm(n, generator=self.gen, device=self.device)
        for i in range(0, n - self.local_batch + 1, self.local_batch):
            yield perm[i:i + self.local_batch]

    def _seed_epoch(self) -> None:
        """Data parallel: this rank's permutation, augmentation and dropout streams for this epoch, from (seed,
        epoch, rank). Ranks never repeat each other's draws, and a resumed run needs no per-rank RNG state (rank 0
        alone saves, and it has only its own)."""
        g, t = np.random.SeedSequence([self.seed, self.epoch, self.dist.rank]).generate_state(2)
        self.gen.manual_seed(int(g))
        torch.manual_seed(int(t))

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step on batch (x, y), as micro-batches with gradient accumulation after an OOM."""
        self.optimizer.zero_grad(set_to_none=True)
        chunks = list(zip(x.split(self.micro_batch), y.split(self.micro_batch)))
        total = None
        for k, (xs, ys) in enumerate(chunks):
            # DDP: one gradient all-reduce per step, after the last micro-batch, however many micro-batches this
            # rank needed (ranks split independently after an OOM, and every rank must all-reduce equally often)
            local = self.ddp.no_sync() if self.ddp is not None and k < len(chunks) - 1 else contextlib.nullcontext()
            with local:
                with self.numerics.autocast():
                    logits = self.step_model(xs)
                loss = self.criterion(logits, ys)
                if len(chunks) > 1:
                    loss = loss * (len(xs) / len(x))  # the accumulated gradient is the full batch's mean
                loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        if self.criterion.log_vars is not None and self.criterion.log_vars.grad is not None:
            self.dist.average_(self.criterion.log_vars.grad)  # the loss's own parameters are outside DDP
        self.optimizer.step()
        if self.ema:
            self.ema.update(self.model)
        return total

    def _shrink_micro_batch(self) -> None:
        """Called after leaving the OOM handler, so the failed step's activations are already freed."""
        old = self.micro_batch
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if old // 2 < self.min_micro_batch:
            raise OutOfMemory(f"CUDA out of memory even with micro-batches of {old} images (floor "
                              f"{self.min_micro_batch}; BatchNorm is unreliable below it): use a smaller --size or "
                              f"model, or free the GPU")
        self.micro_batch = old // 2
        print(f"  CUDA out of memory at micro-batch {old}: epoch {self.epoch + 1} goes on with micro-batches of "
              f"{self.micro_batch} and gradient accumulation (effective batch {self.batch_size}, unchanged)")

    def _gathered(self):
        """(rows, their uint8 images on the device) for each training batch of this epoch; a streamed split reads
        the next batch while this one trains."""
        if isinstance(self.train.x, MappedImages):
            return self.train.x.prefetch(self._batches())
        return ((idx, self.train.x[idx]) for idx in self._batches())

    def augment_batch(self, idx: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """The recipe's augmentation of these training rows (`images`: the rows already gathered), resized to the
        model's input size (train images decoded larger by the recipe's train_margin are cropped down to it)."""
        return self.augment_rows(idx, images)[0]

    def augment_rows(self, idx: torch.Tensor, images: torch.Tensor | None = None):
        """augment_batch's images and, per row, whether it was mirrored (the same random draws)."""
        r = self.recipe
        images = self.train.x[idx] if images is None else images
        return augment(images, self.gen, r.crop_scale, r.hflip, r.rotate, r.jitter,
                       out_size=self.size, crop_ratio=r.crop_ratio, crop_sampling=r.crop_sampling,
                       antialias=r.crop_antialias, return_mirror=True)

    def train_epoch(self, max_steps: int | None = None) -> dict:
        """One pass over the training split; returns mean loss and throughput."""
        r = self.recipe
        self.model.train()
        if self.dist.enabled:
            self._seed_epoch()
        losses, seen = [], 0
        steps = per_epoch = self.steps_per_epoch
        if max_steps:
            steps = min(steps, max_steps)
        bar = tqdm(total=steps * self.batch_size, unit="img", unit_scale=True, leave=False,
                   desc=f"epoch {self.epoch + 1}/{r.epochs}", disable=not self.progress)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        for step, (idx, images) in enumerate(self._gathered()):
            if step == steps:
                break
            x, y = self.augment_batch(idx, images), self.train.y[idx]
            while True:
                try:
                    losses.append(self._step(x, y))
                    break
                except torch.cuda.OutOfMemoryError:
                    pass
                self._shrink_micro_batch()  # outside the handler: the traceback no longer pins the activations
            if r.lr_per_step:  # the schedule's position is the global step count (so a resumed run continues it)
                self.scheduler.step_update(self.epoch * per_epoch + step + 1)
            seen += len(idx) * self.dist.world
            bar.update(len(idx) * self.dist.world)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        bar.close()
        stacked = torch.stack(losses) if losses else torch.zeros(1, device=self.device)
        self.dist.average_(stacked)  # each step's global-batch loss, identical on every rank (so is the check below)
        finite = torch.isfinite(stacked)
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0])
            where = f"last saved state: {self.last_path}" if self.persist else "nothing saved (tune trial)"
            raise NonFiniteLoss(f"loss became {stacked[bad].item()} at epoch {self.epoch + 1}, step {bad + 1} "
                                f"(lr {self.lrs()['lr']:.3g}); lower the learning rate or "
                                f"check the data; {where}")
        return {"train_loss": float(stacked.mean()), "train_s": seconds, "img_per_s": seen / max(seconds, 1e-9)}

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema else self.model

    def lrs(self) -> dict:
        """{"lr": the heads' current lr (the recipe's lr on its schedule), "backbone_lr": the backbone's}."""
        return {k: (self.optimizer.param_groups[i]["lr"] if i is not None else float("nan"))
                for k, i in self.lr_groups.items()}

    def predict_split(self, split: Split, flip: bool = False) -> torch.Tensor:
        """(split.total, sum(classes)) probabilities of the eval model for a whole split, in the split's order on
        every rank (each rank predicts its shard; the rows are gathered)."""
        if split.x.shape[0]:
            self.eval_model.eval()  # as evaluating it would leave it (train_epoch switches back)
            probs = predict(inference_net(self.eval_model), split.x, self.micro_batch * 2, flip=flip,
                            precision=self.numerics.precision)
        else:
            probs = torch.zeros((0, sum(self.num_classes)), device=self.device)
        return self.dist.gather_rows(probs, split.index, split.total)

    def validate(self) -> dict:
        # ranks' BatchNorm running statistics drift apart within an epoch (each sees its own batches): all use rank
        # 0's, the ones it saves
        self.dist.broadcast_buffers(self.eval_model)
        probs = self.predict_split(self.val)
        y = self.dist.gather_rows(self.val.y, self.val.index, self.val.total)
        parts = torch.split(probs, list(self.num_classes), dim=1)
        # per head, the mean over its labelled images (a missing label, -1, is ignored; a head without any adds 0)
        val_loss = sum(F.nll_loss(torch.log(p.clamp_min(1e-8)), y[:, i], ignore_index=-1, reduction="sum")
                       / (y[:, i] >= 0).sum().clamp_min(1) for i, p in enumerate(parts))
        pred = torch.stack([p.argmax(1) for p in parts], 1)
        s = score(y.cpu().numpy(), pred.cpu().numpy(), self.num_classes)
        return {"val_loss": float(val_loss), "overall_acc": s["overall_acc"], "class_avg_acc": s["class_avg_acc"],
                "mean_class_acc": s["mean_class_acc"]}

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if SELECT_MODES[self.recipe.select] == "max" else value < self.best

    def run_epoch(self) -> dict:
        t0 = time.perf_counter()
        tr = self.train_epoch()
        va = self.validate()
        last = self.recipe.select == "last"
        metric = va["overall_acc" if last else self.recipe.select]
        row = {"epoch": self.epoch + 1, **self.lrs(), **tr, **va,
               "batch_size": self.batch_size, "micro_batch": self.micro_batch, "epoch_s": time.perf_counter() - t0}
        self.scheduler.step(self.epoch + 1, metric)
        if (self.epoch + 1 == self.recipe.epochs) if last else self._improved(metric):
            self.best, self.best_epoch = metric, self.epoch + 1
            weights = self.eval_model.state_dict()
            if self.persist:
                if self.dist.main:
                    record = {"model": weights, "epoch": self.epoch + 1, "metric": metric}
                    _atomic_save(record, self.run_dir / "best.pt")
                    # a CPU copy that last.pt carries until it is saved at this epoch (a kill before then loses it)
                    self.best_record = {**record, "model": {k: v.detach().to("cpu", copy=True)
                                                            for k, v in weights.items()}}
            else:
                self.best_weights = {"model": {k: v.detach().clone() for k, v in weights.items()},
                                     "epoch": self.epoch + 1, "metric": metric}
        row["best"] = self.best
        self.history.append(row)
        self.epoch += 1
        return row

    def best_state(self) -> dict:
        """{"model": weights, "epoch": ...} of the selected epoch."""
        if self.best_weights is not None:
            return self.best_weights
        return self.dist.on_main(lambda: read_state(self.run_dir / "best.pt"))

    # --- the loop ---------------------------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.restore_last() and self.dist.main:
            print(f"  resuming {self.run_dir} after epoch {self.epoch}/{self.recipe.epochs}")
        else:
            seed_everything(self.seed)
        boundary = True  # True between epochs: the in-memory state is a resumable one
        try:
            while self.epoch < self.recipe.epochs and not self.should_stop():
                boundary = False
                row = self.run_epoch()
                boundary = True
                self.maybe_save()
                if self.dist.main:
                    frame = pd.DataFrame(self.history)
                    atomic_write(self.run_dir / "history.csv", lambda tmp: frame.to_csv(tmp, index=False))
                    print(f"  epoch {row['epoch']:3d}/{self.recipe.epochs}  loss {row['train_loss']:.3f}  "
                          f"val loss {row['val_loss']:.3f}  acc {row['overall_acc']:.4f}  "
                          f"class-avg {row['class_avg_acc']:.4f}  {row['img_per_s']:.0f} img/s")
                if self.on_epoch:
                    self.on_epoch(self.epoch, row)
        except KeyboardInterrupt:
            if boundary:  # Ctrl-C between epochs: nothing of the finished epochs is lost
                self.maybe_save(final=True)
            raise
        self.maybe_save(final=True)
        return self.history

    def should_stop(self) -> bool:
        """Early stopping; never with select=last, where no epoch is "best" until the last one."""
        patience = self.recipe.early_stop
        return bool(patience) and self.recipe.select != "last" and self.epoch - self.best_epoch >= patience

    def info(self) -> dict:
        return {"params": count_params(self.model), "gflops": gflops(self.model, self.size, self.device)}
