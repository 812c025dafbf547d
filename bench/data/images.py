"""Decode every image once, in parallel, to a uint8 array; cache it on disk.

The resize policy (bench/data/resize.py; recipe field `resize`) turns each photo into a square. The cache key covers
the file list, each file's size and mtime, the size and the policy: a changed image, a changed split or another
policy decodes again. Arrays are plain `.npy` files under `cache_home()/images/`, one per (files, size, policy).

Decoding writes each chunk of 64 images straight into a memory-mapped `.npy` under a temporary name, renamed when
complete: decoding N images never holds all N in memory, and a kill leaves no half cache. `mmap=True` returns the
cache file memory-mapped read-only (the trainer's `stream` data mode reads batches from it); by default the array is
read into memory (`resident`).

Every image the suite reads is opened by bench/data/opening.py (`open_image`: the pixel limit; `to_rgb`: transparent
pixels composited on white), which the dataset's validation uses too.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

from bench.data.dataset import DatasetError, cache_home
from bench.data.opening import ImageTooLarge, open_image, to_rgb  # noqa: F401 (ImageTooLarge: for callers)
from bench.data.resize import RESIZE

CACHE_VERSION = 2  # 2: transparent pixels composited on BACKGROUND

def decode(path: Path, size: int, policy: str = "letterbox") -> np.ndarray:
    """One image as (size, size, 3) uint8 (open_image's limit; transparency composited, see to_rgb)."""
    resize = RESIZE[policy]
    with open_image(path) as im:
        im.draft("RGB", (size, size))  # JPEG DCT-domain downscale: much faster decode of big photos
        return resize(to_rgb(im, path), size)


def _decode_chunk(paths: list[Path], size: int, policy: str) -> tuple[np.ndarray, list[str]]:
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    errors = []
    for i, p in enumerate(paths):
        try:
            out[i] = decode(p, size, policy)
        except Exception as e:  # corrupt / truncated files: name them all, then fail
            errors.append(f"{p}: cannot decode image ({type(e).__name__}: {e})")
            out[i] = 0
    return out, errors


def cache_key(files: list[Path], size: int, policy: str) -> str:
    entries = []
    for f in map(os.path.abspath, files):
        st = os.stat(f)
        entries.append((f, st.st_size, st.st_mtime_ns))
    blob = json.dumps([CACHE_VERSION, size, policy, entries]).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def cache_path(files: list[Path], size: int, policy: str, cache_dir: Path | None = None) -> Path:
    """The cache file of `files` decoded at `size` by `policy`."""
    cache_dir = Path(cache_dir or cache_home() / "images")
    return cache_dir / f"{size}-{policy}-{cache_key(files, size, policy)}.npy"


def load_images(files: list[Path], size: int, policy: str = "letterbox", cache_dir: Path | None = None,
                n_jobs: int = -1, progress: bool = True, mmap: bool = False) -> np.ndarray:
    """(N, size, size, 3) uint8 for `files`, decoded once and then read from the on-disk cache; `mmap`: the cache
    file memory-mapped read-only instead of read into memory."""
    RESIZE[policy]  # an unknown policy fails here, naming the registered ones
    files = [Path(f) for f in files]
    target = cache_path(files, size, policy, cache_dir)
    if not target.exists():
        _decode_to(target, files, size, policy, n_jobs, progress)
    images = np.load(target, mmap_mode="r")
    # memory-map then copy: ~10x faster than np.load's chunked read here
    return images if mmap else np.array(images)


def _decode_to(target: Path, files: list[Path], size: int, policy: str, n_jobs: int, progress: bool) -> None:
    """Decode `files` chunk by chunk into a memory-mapped temporary .npy, renamed to `target` when complete; every
    file that cannot be decoded is named in one DatasetError, and then no cache file is left."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}.npy")
    chunks = [files[i:i + 64] for i in range(0, len(files), 64)]
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3))
        jobs = (delayed(_decode_chunk)(c, size, policy) for c in chunks)
        results = Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator")(jobs)
        if progress and chunks:
            from tqdm import tqdm
            results = tqdm(results, total=len(chunks), desc=f"decode {len(files)} images @{size}px", unit="chunk")
        errors, at = [], 0
        for arr, errs in results:  # in order: chunk k fills rows [64k, 64k + len)
            out[at:at + len(arr)] = arr
            at += len(arr)
            errors.extend(errs)
        if errors:
            raise DatasetError(errors, "images")
        out.flush()
        del out
        os.replace(tmp, target)  # atomic: an interrupted write never leaves a half cache
    finally:
        tmp.unlink(missing_ok=True)


def timed_load(files: list[Path], size: int, policy: str = "letterbox", cache_dir: Path | None = None):
    t0 = time.perf_counter()
    images = load_images(files, size, policy, cache_dir, progress=False)
    return images, time.perf_counter() - t0
