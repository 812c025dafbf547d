"""Checkpoints (`best.pt`, `last.pt`, a refit's or a fold's `best.pt`): written as tensors and plain values, and read
so that nothing in them can run code.

A `.pt` file is a pickle, and unpickling an arbitrary object can run arbitrary code: a run folder someone else made
(a teammate's `runs/`, a course's baselines, a downloaded member) must never be able to do that. So
- `save` writes only tensors and plain Python values (dict, list, tuple, str, int, float, bool, None): numpy arrays
  and scalars (the numpy RNG state, a metric that came out of numpy) are converted first (`to_plain`);
- `load` reads with `torch.load(weights_only=True)`, PyTorch's restricted unpickler, which builds tensors and plain
  values and nothing else. States written by versions before 2026-12-07 hold the numpy RNG state as a numpy array:
  exactly the numpy types that takes (`LEGACY_NUMPY`: an array of a plain dtype, rebuilt from its bytes) are allowed
  by name, nothing broader (torch.serialization.safe_globals);
- a file that needs anything else is refused (`UnsafeCheckpoint`) with the names of what it would import, found
  without running it (torch.serialization.get_unsafe_globals_in_checkpoint), and the way out for a file the user
  made and trusts: `python -m bench.trust FILE` re-saves it once in the safe form (`trust_and_resave`).
Every reader of a checkpoint (resume, predict, export, computed TTA views, the distillation teacher) goes through
`load`; before reading, a finished run's file is checked against the size and sha256 its run.json recorded
(bench/artifacts.py `verify`).
"""
from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from bench.artifacts import ArtifactError, atomic_write, verify


class UnsafeCheckpoint(ArtifactError):
    """A checkpoint that the restricted unpickler refuses: loading it could run code."""


def _legacy_numpy() -> list:
    """The numpy globals of states written before 2026-12-07 (np.random.get_state()'s uint32 key array)."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    for name in ("UInt32DType", "Float64DType", "Int64DType"):  # the dtype classes numpy 1.25+ pickles by name
        cls = getattr(getattr(np, "dtypes", None), name, None)
        if cls is not None:
            allowed.append(cls)
    return allowed


LEGACY_NUMPY = _legacy_numpy()


def to_plain(obj):
    """`obj` with numpy arrays made tensors and numpy scalars Python numbers, recursively through dicts, lists and
    tuples: what the restricted unpickler can read back. A container holding no numpy value is returned as it is
    (a state_dict keeps its `_metadata`, which load_state_dict reads)."""
    if isinstance(obj, np.ndarray):
        if obj.dtype in (np.uint16, np.uint32):  # widened: torch's uint16/32 tensors do not pickle everywhere (e.g.
            obj = obj.astype(np.int64)          # DDP's broadcast_object_list); the numpy RNG keys fit exactly
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        plain = {k: to_plain(v) for k, v in obj.items()}
        if all(plain[k] is v for k, v in obj.items()):
            return obj
        return OrderedDict(plain) if isinstance(obj, OrderedDict) else plain
    if isinstance(obj, (list, tuple)):
        plain = [to_plain(v) for v in obj]
        if all(p is v for p, v in zip(plain, obj)):
            return obj
        return plain if isinstance(obj, list) else tuple(plain)
    return obj


def save(obj, path: str | Path) -> None:
    """Write `obj` (tensors and plain values, numpy converted) atomically to `path`."""
    plain = to_plain(obj)
    atomic_write(path, lambda tmp: torch.save(plain, tmp))


def load(path: str | Path, check: bool = True):
    """The checkpoint at `path`, on the CPU, read by the restricted unpickler; UnsafeCheckpoint when it holds
    anything beyond tensors and plain values (nothing of it has run). `check`: first verify the file against the
    size and sha256 its run folder recorded (a finished run's; bench/artifacts.py verify)."""
    path = Path(path)
    if check:
        verify(path)
    try:
        with torch.serialization.safe_globals(LEGACY_NUMPY):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not even a readable archive
            names = []
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in LEGACY_NUMPY}
        names = [n for n in names if n not in allowed]
        what = (f"it would import {', '.join(names)}" if names else f"the restricted unpickler refused it "
                f"({str(e).splitlines()[0][:200]})")
        raise UnsafeCheckpoint(
            f"{path}: refused: {what}. A checkpoint the suite writes holds only tensors and plain values; loading "
            f"anything else can run code from whoever made the file. If you made this file yourself (or fully trust "
            f"its source), re-save it once in the safe form: python -m bench.trust {path}") from None


def load_weights(path: str | Path) -> dict:
    """A network's state_dict from a checkpoint (its `model`, via `load`) or from a `.safetensors` file exported by
    bench.export (safetensors holds tensors only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:  # truncated or not a safetensors file
            raise ArtifactError(f"{path}: unreadable .safetensors file ({type(e).__name__}: {e})") from e
    return load(path)["model"]


def trust_and_resave(path: str | Path) -> list[str]:
    """Load `path` with the full unpickler (it runs whatever code the file holds: only for the user's own, trusted
    files) and write it back in the safe form; returns the names of the globals it needed."""
    path = Path(path)
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    obj = torch.load(path, map_location="cpu", weights_only=False)
    save(obj, path)
    load(path, check=False)  # the safe form must now read back; raises UnsafeCheckpoint if an object survives
    return names


def numpy_rng_state(state) -> tuple:
    """np.random.set_state's tuple from a saved one (the key array saved as a tensor, or as a numpy array by states
    written before 2026-12-07)."""
    name, keys, *rest = state
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    return (name, keys.astype(np.uint32), *rest)
