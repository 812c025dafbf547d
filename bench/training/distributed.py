"""Data-parallel training of one model over several processes (`torchrun --nproc-per-node N -m bench.run ...`).

torchrun starts N copies of the command and tells each its place through WORLD_SIZE, RANK and LOCAL_RANK;
`from_env` reads them, joins the process group (nccl between GPUs, gloo on the CPU) and picks cuda:LOCAL_RANK.
Without those variables (or with WORLD_SIZE=1) everything here is a no-op, so the single-process path is unchanged.

What each process holds and does:
- Data: every split is sharded (`shard_indices`): rank r keeps only its ~1/N of the decoded uint8 images resident,
  so a dataset N times larger than one GPU's memory fits on N GPUs. Shards are strided over a fixed random
  permutation, so each one is a random sample of the split even when the split file is sorted (per-rank BatchNorm
  statistics then see the same distribution on every rank).
- Batch and learning rate: the recipe's batch is the global batch; each process takes batch_size / N images from
  its own shard per step, and DistributedDataParallel averages the gradients, so the step equals one step on the
  union of the N local batches at the recipe's lr and schedule. A batch size that N does not divide is refused
  (`check_batch`) rather than silently changed.
- BatchNorm: per-process batch statistics (plain DDP), not SyncBatchNorm. A DDP step is then exactly a
  single-process step on the same global batch split into N micro-batches (the trainer's out-of-memory path, "ghost"
  BatchNorm), which is what tests/test_ddp.py checks. Why not SyncBatchNorm: it runs on CUDA only (torch refuses
  CPU tensors, so the CPU tests could not check it), costs one all-reduce per BN layer per forward, and per-GPU
  batches of >= 32 are what large-batch ImageNet training uses with per-GPU statistics (Goyal et al. 2017). Below
  8 images per process BatchNorm is unreliable, as for micro-batches. Running statistics: DDP broadcasts rank 0's
  buffers at every training forward, and the trainer broadcasts the evaluated model's buffers before validation, so
  every rank evaluates, and rank 0 saves, rank 0's statistics.
- Randomness: each rank draws its own permutation, augmentation and dropout from streams seeded by
  (seed, epoch, rank) at the start of every epoch, so ranks never repeat each other's draws and a resumed run needs
  no per-rank RNG state (it is the same run, bit for bit, given the same N).
- Artifacts: rank 0 alone claims the run folder and writes run.json, checkpoints, history, probabilities and the
  leaderboard; decisions that read files (finished? resumable?) are taken on rank 0 and broadcast (`on_main`), so
  ranks never need a shared filesystem or disagree. Validation and test probabilities are gathered into the
  split's original order (`gather_rows`): the files are those a single process writes with the same weights.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

SHARD_SEED = 0  # fixed, not the training seed: a rank's shard (and its decode cache file) is the same for every seed


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel run; `Dist()` is the single-process case."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device | None = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes artifacts and prints."""
        return self.rank == 0

    def describe(self) -> str:
        return f"{self.world} processes (DDP, {self.backend})" if self.enabled else "1 process"

    # --- data ------------------------------------------------------------------------------------------------
    def shard(self, n: int) -> np.ndarray:
        """Positions (ascending) of this rank's rows among a split's n rows; all of them in one process."""
        return shard_indices(n, self.rank, self.world)

    def gather_rows(self, local: torch.Tensor, index: torch.Tensor | None, total: int) -> torch.Tensor:
        """Every rank's rows of a sharded split, put back in the split's order, on every rank."""
        if not self.enabled:
            return local
        if index is None:
            raise ValueError("gathering a sharded split needs the positions of each rank's rows (Split.index); "
                             "build the splits with ImageStore(..., dist=...) or Split.from_numpy(..., index=...)")
        import torch.distributed as dist
        longest = -(-total // self.world)  # shards differ by at most one row: pad to the longest
        pad = longest - len(local)
        rows = torch.cat([local, local.new_zeros((pad, *local.shape[1:]))]) if pad else local
        pos = torch.cat([index, index.new_full((pad,), -1)]) if pad else index
        all_rows = [torch.empty_like(rows) for _ in range(self.world)]
        all_pos = [torch.empty_like(pos) for _ in range(self.world)]
        dist.all_gather(all_rows, rows.contiguous())
        dist.all_gather(all_pos, pos.contiguous())
        rows, pos = torch.cat(all_rows), torch.cat(all_pos)
        keep = pos >= 0
        out = local.new_empty((total, *local.shape[1:]))
        out[pos[keep]] = rows[keep]
        return out

    # --- collectives -----------------------------------------------------------------------------------------
    def average_(self, t: torch.Tensor) -> torch.Tensor:
        """In place: the mean of `t` over ranks (gloo has no AVG reduction: sum, then divide)."""
        if self.enabled:
            import torch.distributed as dist
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(self.world)
        return t

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank."""
        if self.enabled:
            import torch.distributed as dist
            for b in module.buffers():
                dist.broadcast(b, 0)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (pickled; for decisions and states, not for per-step data)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on rank 0 only; every rank returns its result or raises its exception. Anything that reads or
        writes run files goes through here, so no rank waits in a collective for one that stopped."""
        if not self.enabled:
            return fn()
        outcome = None
        if self.main:
            try:
                outcome = ("ok", fn())
            except Exception as e:  # noqa: BLE001  (re-raised on every rank, rank 0 included)
                try:
                    pickle.dumps(e)
                    outcome = ("error", e)
                except Exception:  # noqa: BLE001
                    outcome = ("error", RuntimeError(f"{type(e).__name__}: {e}"))
        kind, value = self.broadcast_object(outcome)
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


SINGLE = Dist()


def shard_indices(n: int, rank: int, world: int) -> np.ndarray:
    """Rank `rank`'s share of n rows: strided over a fixed random permutation (a random sample of the split even if
    its file is sorted by class), sorted ascending; shard sizes differ by at most one. One process: all rows."""
    if world == 1:
        return np.arange(n)
    return np.sort(np.random.default_rng(SHARD_SEED).permutation(n)[rank::world])


def check_batch(batch_size: int, world: int) -> None:
    """ValueError unless `world` processes can share the recipe's global batch equally."""
    if world > 1 and batch_size % world:
        lo, hi = batch_size // world * world, (batch_size // world + 1) * world
        options = f"--batch-size {lo} or {hi}" if lo else f"--batch-size {hi}"
        raise ValueError(f"batch size {batch_size} does not split evenly over {world} processes: each process takes "
                         f"batch_size / {world} images so that the averaged gradient is the global batch's mean, and "
                         f"unequal shares would weight some images more; use {options} (a multiple of {world}), or "
                         f"another --nproc-per-node")


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def from_env(device: str = "auto") -> Dist:
    """The single-process Dist() unless started by torchrun with WORLD_SIZE > 1; then join the process group
    (nccl on CUDA, gloo on the CPU) on cuda:LOCAL_RANK (or the CPU). ValueError names what cannot work."""
    if not under_torchrun():
        return SINGLE
    import torch.distributed as dist
    try:
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as e:
        raise ValueError(f"WORLD_SIZE is set but RANK/LOCAL_RANK are missing or not integers ({e}); start "
                         f"data-parallel training with torchrun --nproc-per-node N -m bench.run ...") from e
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {device}: under torchrun each process uses cuda:LOCAL_RANK (or the CPU); pass "
                         f"--device auto, cuda or cpu, and choose GPUs with CUDA_VISIBLE_DEVICES")
    cuda = device != "cpu" and torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ValueError("--device cuda: CUDA is not available on this machine; use --device cpu (gloo backend)")
    if cuda:
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) visible on this "
                             f"machine: use --nproc-per-node <= {torch.cuda.device_count()}")
        dev, backend = torch.device("cuda", local), "nccl"
        torch.cuda.set_device(dev)
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, **({"device_id": dev} if cuda else {}))
    return Dist(rank, world, local, backend, dev)
