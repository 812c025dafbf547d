"""Matplotlib figures shared by training and reports (Agg backend: no display needed), and the report figures'
cache: a figure's PNG records a hash of what it was drawn from, so a report rebuilt with the same inputs keeps it
instead of drawing it again (bench.run, bench.ensemble and bench.tune rebuild the report after every change)."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.artifacts import atomic_write  # noqa: E402


def plot_curves(history: pd.DataFrame, path: Path, title: str = "") -> Path:
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(history["epoch"], history["train_loss"], label="train")
    a.plot(history["epoch"], history["val_loss"], label="val")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend()
    b.plot(history["epoch"], history["overall_acc"], label="overall")
    if "class_avg_acc" in history:  # histories written before the class average was tracked lack it
        b.plot(history["epoch"], history["class_avg_acc"], label="class-average")
    b.plot(history["epoch"], history["mean_class_acc"], label="balanced", alpha=0.5)
    b.set_xlabel("epoch"), b.set_ylabel("val accuracy"), b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90))
    plt.close(fig)
    return path


INPUTS_KEY = "fashion-bench-inputs"  # PNG text chunk: the hash of everything a figure was drawn from


def _feed(h, obj) -> None:
    """Feed `obj` to hash `h` unambiguously: arrays by dtype, shape and bytes, mappings in key order, files (Path)
    by name, size and modification time (an image edited in place gives another key)."""
    if isinstance(obj, np.ndarray):
        h.update(f"a{obj.dtype.str}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, pd.DataFrame):
        _feed(h, ("frame", list(obj.columns), [obj[c].to_numpy() for c in obj.columns]))
    elif isinstance(obj, dict):
        h.update(b"d%d" % len(obj))
        for k in sorted(obj, key=repr):
            _feed(h, k), _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(b"l%d" % len(obj))
        for x in obj:
            _feed(h, x)
    elif isinstance(obj, Path):
        try:
            st = obj.stat()
            h.update(f"p{obj}|{st.st_size}|{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"p{obj}|missing".encode())
    elif obj is None or isinstance(obj, (str, bool, int, float, np.generic)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        raise TypeError(f"figure input of type {type(obj).__name__} cannot be hashed")


@functools.lru_cache(maxsize=None)
def _source_digest(code_file: str) -> bytes:
    """The hash of a drawing module's source, read once per process (it does not change while the process runs)."""
    return hashlib.sha256(Path(code_file).read_bytes()).digest()


def figure_key(code_file: str, *inputs) -> str:
    """The hash of a figure's inputs, of the source file that draws it (`code_file`: an edited drawing function
    redraws) and of the matplotlib version."""
    h = hashlib.sha256(matplotlib.__version__.encode())
    h.update(_source_digest(code_file))
    for x in inputs:
        _feed(h, x)
    return h.hexdigest()


def figure_current(path: Path, key: str) -> bool:
    """Whether `path` is a PNG drawn from inputs with hash `key` (a missing or unreadable file is not)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.info.get(INPUTS_KEY) == key
    except Exception:  # missing, truncated, not a PNG: draw it again
        return False


def save_figure(fig, path: Path, key: str, dpi: int, **pil_kwargs) -> None:
    """Write `fig` atomically as a PNG that records `key` (see figure_current), and close it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, metadata={INPUTS_KEY: key}, pil_kwargs=pil_kwargs))
    plt.close(fig)
