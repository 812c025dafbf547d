"""Opening an image file, for every reader of images (the dataset's validation, the decode cache, bench.predict's
sources): one owner of the two rules that apply to all of them.

- `open_image`: an image of more than FASHION_BENCH_MAX_PIXELS pixels (default 178,956,970, PIL's own
  decompression-bomb limit, which this check replaces) is refused as too large before any pixel is decoded, saying
  how to allow it;
- `to_rgb`: an image with transparent pixels is composited on white (BACKGROUND), said once per process: converting
  to RGB would otherwise show whatever colour the transparent pixels hide.
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

MAX_PIXELS_ENV = "FASHION_BENCH_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 2 * 89_478_485  # PIL's DecompressionBombError threshold (2 x its default MAX_IMAGE_PIXELS)
BACKGROUND = (255, 255, 255)  # what transparent pixels are composited on
Image.MAX_IMAGE_PIXELS = None  # PIL's check (a warning, then an error about a "DOS attack") gives way to open_image's


class ImageTooLarge(ValueError):
    """An image over the pixel limit (max_pixels)."""


def max_pixels() -> int | None:
    """The largest image (width x height) the suite opens: $FASHION_BENCH_MAX_PIXELS (0: no limit), else
    DEFAULT_MAX_PIXELS."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        return DEFAULT_MAX_PIXELS
    if not text.isdigit():
        raise ValueError(f"${MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]!r}: expected a number of pixels (0: no limit)")
    return int(text) or None


@contextmanager
def open_image(path: Path):
    """PIL's Image.open, its header read only; ImageTooLarge (naming the size and the setting that allows it) for an
    image over max_pixels(), before any pixel is decoded."""
    limit = max_pixels()
    with Image.open(path) as im:
        w, h = im.size
        if limit is not None and w * h > limit:
            raise ImageTooLarge(f"{path}: image too large, {w} x {h} = {w * h / 1e6:.1f} megapixels, over the limit of "
                                f"{limit / 1e6:.1f} megapixels (a guard against decompression bombs); if the file is "
                                f"trusted, allow it: export {MAX_PIXELS_ENV}={w * h} (0: no limit)")
        yield im


_said = threading.Event()


def to_rgb(im: Image.Image, path: Path) -> Image.Image:
    """The image in RGB; one with transparent pixels composited on BACKGROUND (said once per process)."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            if not _said.is_set():
                _said.set()
                print(f"[images] {path} has transparent pixels: they are composited on {BACKGROUND} (white), as in "
                      f"every image with transparency (said once)", file=sys.stderr)
            return Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba).convert("RGB")
    return im.convert("RGB")
