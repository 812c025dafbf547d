"""Image sources for bench.predict: SOURCE is an image, a folder (searched recursively) or a list file.

A list file (suffix .txt, .lst or .list) holds one image path per line, relative to the list file's folder unless
absolute; blank lines and lines starting with # are skipped. In a folder every regular file that is not hidden (a
name starting with '.') is a candidate, in sorted order: a file that is not an image is found out by decoding it,
like a corrupt one. Decoding uses the decode cache's own decoder (bench/data/images.py `decode`, the recipe's
resize policy), so an image is prepared pixel for pixel as the training and evaluation images were; unreadable
files are collected with their reason instead of stopping the run.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from bench.data.images import decode

LIST_SUFFIXES = (".txt", ".lst", ".list")


class SourceError(ValueError):
    """SOURCE names nothing to predict: missing, an empty folder or list; bench.predict exits 2."""


def list_sources(source: str | Path) -> list[Path]:
    """The candidate image files of SOURCE, in order (see the module docstring); SourceError if there are none."""
    src = Path(source)
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(src).parts))
        if not files:
            raise SourceError(f"{src}: the folder holds no files (searched recursively; hidden files are skipped)")
        return files
    if not src.exists():
        raise SourceError(f"{src}: no such file or folder; SOURCE is an image, a folder or a list file "
                          f"({', '.join(LIST_SUFFIXES)})")
    if src.suffix.lower() not in LIST_SUFFIXES:
        return [src]
    try:
        lines = src.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"{src}: cannot read the list file ({e})") from e
    files = [Path(os.path.normpath(src.parent / s))  # an absolute s replaces src.parent
             for s in (line.strip() for line in lines) if s and not s.startswith("#")]
    if not files:
        raise SourceError(f"{src}: the list file names no image (one path per line, relative to its folder)")
    return files


@dataclass
class Batch:
    """Decoded images of one batch: `paths` that decoded, `images` {(size, policy): (n, size, size, 3) uint8} in the
    same order, and `failed` [(path, reason)] for the batch's files that did not."""
    paths: list[Path]
    images: dict[tuple[int, str], np.ndarray]
    failed: list[tuple[Path, str]]


def _decode_all(path: Path, inputs: list[tuple[int, str]]):
    try:
        return {key: decode(path, *key) for key in inputs}, None
    except Exception as e:  # not an image, truncated, unreadable, missing: named, skipped, counted
        reason = "no such file" if isinstance(e, FileNotFoundError) else f"{type(e).__name__}: {e}"
        return None, reason


def decoded_batches(files: list[Path], inputs: list[tuple[int, str]], batch_size: int,
                    workers: int | None = None) -> Iterator[Batch]:
    """`files` decoded at every (size, resize policy) in `inputs`, `batch_size` files at a time, in order; threads
    decode the next batch while the caller works on this one."""
    chunks = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(workers) as pool:
        def submit(chunk):
            return [pool.submit(_decode_all, p, inputs) for p in chunk]
        ahead = submit(chunks[0]) if chunks else []
        for k, chunk in enumerate(chunks):
            results = [f.result() for f in ahead]
            if k + 1 < len(chunks):
                ahead = submit(chunks[k + 1])
            good = [(p, r) for p, (r, _) in zip(chunk, results) if r is not None]
            failed = [(p, why) for p, (r, why) in zip(chunk, results) if r is None]
            images = {key: (np.stack([r[key] for _, r in good]) if good else
                            np.empty((0, key[0], key[0], 3), np.uint8)) for key in inputs}
            yield Batch([p for p, _ in good], images, failed)
