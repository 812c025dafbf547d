"""Mistakes you can see: an entry's val predictions drawn on the dataset's original photos (library of the
leaderboard report and of `python -m bench.report --gallery ENTRY`).

For one entry, per attribute, the most confident wrong predictions (true class, predicted class, the probability of
the predicted class), sorted by that probability, highest first: confident errors on plausible-looking photos are
usually label noise, confident errors on clear photos model failure. Plus one page of the rarest classes (by training
count) with a few val images each and what the entry said about them, right or wrong.

Which predictions: the entry's main column, as bench/reporting/predictions.py decides it for the leaderboard (the
one owner of that choice), so each class's wrong / labelled count agrees with the per-class accuracy beside it: the
plain view (a model's argmax; an ensemble's decision rule on its members' plain probabilities, out-of-fold when CV
ran). The shown probability is the (combined) probability of the predicted class, at the views the entry stored
probabilities for (an ensemble with TTA views stores them at those views only, and the gallery says so); a fitted
rule may pick a class other than the most probable one. A k-fold member shows its out-of-fold predictions over
train + val. Images missing labels (-1) for an attribute are skipped for it. The dataset is reopened from the
data_root the run recorded; when it cannot be (moved, changed), the gallery is skipped with one line saying why, and
the report is built as usual.
"""
from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bench.artifacts import ArtifactError, inside, read_run
from bench.data import DatasetError, attributes_of, open_dataset, reopen_args
from bench.metrics import MISSING
from bench.reporting.predictions import Column

K_MISTAKES = 12  # wrong predictions shown per attribute
K_RARE = 6  # rarest classes on the rare-classes page
PER_RARE = 4  # val images per rare class (the first in split order: a fair sample, not the worst)
COLUMNS = 4  # tiles per row of a mistakes grid
THUMB = 150  # thumbnail box in pixels (aspect ratio kept inside it)
TEXT_H = 46  # pixels of title lines above each thumbnail
DPI = 100


class GalleryUnavailable(Exception):
    """The gallery cannot be drawn (dataset moved or changed, no probabilities); the message says why."""


@dataclass
class Tile:
    """One drawn image: its row in the scored images, its file, the true and predicted class names, the probability
    of the predicted class and whether the prediction is right."""
    row: int
    path: Path
    true: str
    pred: str
    p: float
    right: bool


@dataclass
class Gallery:
    """What was drawn for one entry: per attribute the mistakes figure's file (None: no wrong prediction) and its
    tiles, the wrong / labelled counts per class, and the rare-classes page's rows (class, tiles)."""
    label: str
    what: str
    split: str
    attributes: tuple
    mistakes: dict = field(default_factory=dict)  # attribute -> (file name or None, [Tile], n_wrong, n_labelled)
    per_class: dict = field(default_factory=dict)  # (a, c) -> (wrong, labelled)
    rare_file: str | None = None
    rare: list = field(default_factory=list)  # [(a, c, train count, [Tile])]
    rare_note: str = ""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def confident_mistakes(labels: np.ndarray, pred: np.ndarray, conf: np.ndarray, k: int = K_MISTAKES) -> np.ndarray:
    """Rows of one attribute's wrong predictions, most confident first (ties: split order), at most k; rows whose
    label is missing (-1) are not wrong, they are skipped."""
    wrong = np.flatnonzero((labels != MISSING) & (pred != labels))
    return wrong[np.lexsort((wrong, -conf[wrong]))][:k]


def rarest_classes(train_counts, val_labels: np.ndarray, k: int = K_RARE) -> tuple[list, list]:
    """The k classes (attribute, class) with the fewest training images among those with a labelled image in
    `val_labels` (ties: attribute, then class order), and the rarer classes skipped for having none."""
    ranked = sorted((int(n), a, c) for a, counts in enumerate(train_counts) for c, n in enumerate(counts))
    chosen, skipped = [], []
    for n, a, c in ranked:
        if len(chosen) == k:
            break
        (chosen if (val_labels[:, a] == c).any() else skipped).append((a, c))
    return chosen, skipped


def describe(column: Column, meta: dict) -> str:
    """What a gallery shows: which predictions, at which views, and what its p is."""
    if meta.get("kind") != "ensemble":
        return (f"{column.views}-view {column.rule} (the leaderboard's main column); p is the model's probability "
                f"of the predicted class")
    p = "the ensemble's probability of the predicted class" + (
        "" if column.conf_views == column.views else
        f" at its views {column.conf_views} (its {column.views}-view probabilities are not stored)")
    return (f"its `{column.rule}` predictions at views {column.views} "
            f"({meta.get('val_scoring', 'scoring not recorded')}); the leaderboard's main column; p is {p}")


def image_paths(meta: dict, runs_dir: Path, labels: np.ndarray) -> list[Path]:
    """The image file of every scored row: the val split, or train + val for a k-fold member (its pool order). An
    ensemble is looked up through its first member's run.json. Raises GalleryUnavailable with the reason."""
    source = meta
    if meta.get("kind") == "ensemble":
        members = meta.get("members") or []
        if not members:
            raise GalleryUnavailable("the ensemble's run.json lists no members")
        try:
            source = read_run(inside(runs_dir, members[0], "members", "the entry's run.json")).meta
        except ArtifactError as e:
            raise GalleryUnavailable(f"its member {members[0]} is gone ({e})") from None
    root = source.get("data_root")
    if not root:
        raise GalleryUnavailable("its run.json records no data_root")
    try:
        ds = open_dataset(root, check_images=False, **reopen_args(source.get("data_layout")))
    except DatasetError as e:
        raise GalleryUnavailable(f"the dataset at {root} cannot be opened ({e.problems[0]}"
                                 f"{f' and {len(e.problems) - 1} more problem(s)' if len(e.problems) > 1 else ''})"
                                 ) from None
    splits = ["val"] if meta.get("scored_on", "val") == "val" else ["train", "val"]
    paths = [f for s in splits for f in ds.files(s)]
    ds_labels = np.concatenate([ds.splits[s].labels for s in splits])
    if ds_labels.shape != labels.shape or not np.array_equal(ds_labels, labels):
        raise GalleryUnavailable(f"the dataset at {root} no longer matches the run's {'+'.join(splits)} labels "
                                 f"({len(ds_labels)} images now, {len(labels)} scored)")
    return paths


def thumbnail(path: Path, box: int = THUMB) -> np.ndarray | None:
    """The original photo, EXIF-rotated, scaled (up or down) to fit box x box with its aspect ratio; None if
    unreadable."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (box, box))  # a JPEG decodes at the smallest DCT scale still >= the box: fast on big photos
            im = ImageOps.exif_transpose(im).convert("RGB")
            return np.asarray(ImageOps.contain(im, (box, box)))
    except Exception:  # PIL raises many types for bad files; the tile says "unreadable"
        return None


def _short(name: str, n: int = 22) -> str:
    return name if len(name) <= n else name[:n - 1] + "…"


def draw_grid(cells: list, path: Path, title: str, columns: int) -> None:
    """One figure of `cells`, row-major, `columns` per row: each (image path or None, [(text, colour)] lines). A
    file drawn from the same cells, photos and title is kept (bench.plots.figure_key)."""
    from bench.plots import figure_current, figure_key, plt, save_figure
    cells = [(None if p is None else Path(p), [tuple(x) for x in lines]) for p, lines in cells]
    if figure_current(path, key := figure_key(__file__, cells, title, columns)):
        return
    rows = max(1, -(-len(cells) // columns))
    cw, ch = THUMB + 12, THUMB + TEXT_H + 10
    title = "\n".join(textwrap.fill(line, columns * cw // 9) for line in title.split("\n"))  # ~9 px a bold char
    head = 16 * (title.count("\n") + 1) + 10
    canvas = np.full((head + rows * ch, columns * cw, 3), 255, np.uint8)
    fig = plt.figure(figsize=(canvas.shape[1] / DPI, canvas.shape[0] / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    texts = []
    for i, (img_path, lines) in enumerate(cells):
        r, c = divmod(i, columns)
        x0, y0 = c * cw + 6, head + r * ch + TEXT_H
        img = thumbnail(img_path) if img_path is not None else None
        if img is not None:
            h, w = img.shape[:2]
            ox, oy = x0 + (THUMB - w) // 2, y0 + (THUMB - h) // 2
            canvas[oy:oy + h, ox:ox + w] = img
        elif img_path is not None:
            lines = [*lines, ("(image unreadable)", "grey")]
        for j, (text, colour) in enumerate(lines):
            texts.append((x0 + THUMB / 2, y0 - TEXT_H + 4 + 13 * j, text, colour))
    ax.imshow(canvas, interpolation="none")
    for x, y, text, colour in texts:
        ax.text(x, y, text, ha="center", va="top", fontsize=8, color=colour)
    ax.text(canvas.shape[1] / 2, 6, title, ha="center", va="top", fontsize=9, weight="bold")
    ax.set_axis_off()
    # zlib level 1: photos compress little at any level, and level 6 took half the drawing time
    save_figure(fig, path, key, dpi=DPI, compress_level=1)


def build_gallery(entry_label: str, meta: dict, labels: np.ndarray, column: Column, runs_dir: Path, files: Path,
                  k: int = K_MISTAKES, k_rare: int = K_RARE, per_rare: int = PER_RARE) -> Gallery:
    """Draw the galleries of one entry's `column` of predictions (bench/reporting/predictions.py; the report passes
    the entry's main column) on the scored images' `labels` into `files` (the report's leaderboard_files/); return
    what was drawn. Raises GalleryUnavailable (with the reason) when the images cannot be found; nothing is then
    written."""
    pred, conf, what = column.pred, column.conf, describe(column, meta)
    paths = image_paths(meta, runs_dir, labels)
    attrs, names = attributes_of(meta), meta["class_names"]
    split = "val" if meta.get("scored_on", "val") == "val" else "out-of-fold (train + val)"
    g = Gallery(entry_label, what, split, attrs)
    stem = _slug(entry_label)

    def tile(row, a):
        return Tile(row, paths[row], names[a][labels[row, a]], names[a][pred[row, a]], float(conf[row, a]),
                    bool(pred[row, a] == labels[row, a]))

    for a, attr in enumerate(attrs):
        labelled = labels[:, a] != MISSING
        for c in range(len(names[a])):
            of_c = labels[:, a] == c
            g.per_class[a, c] = (int((of_c & (pred[:, a] != c)).sum()), int(of_c.sum()))
        n_wrong = int((labelled & (pred[:, a] != labels[:, a])).sum())
        tiles = [tile(r, a) for r in confident_mistakes(labels[:, a], pred[:, a], conf[:, a], k)]
        name = None
        if tiles:
            name = f"gallery-{stem}-{a + 1}-{_slug(attr)}.png"
            cells = [(t.path, [(f"true: {_short(t.true)}", "black"), (f"pred: {_short(t.pred)}", "firebrick"),
                               (f"p = {t.p:.2f}", "firebrick")]) for t in tiles]
            draw_grid(cells, files / name,
                      f"{entry_label}: {attr} on {split}, the {len(tiles)} most confident wrong predictions "
                      f"(of {n_wrong} wrong / {int(labelled.sum())} labelled), highest p first", COLUMNS)
        g.mistakes[attr] = (name, tiles, n_wrong, int(labelled.sum()))
    counts = meta.get("train_class_counts")
    if counts is None:
        g.rare_note = "no training class counts recorded, so no rare-classes page"
        return g
    chosen, skipped = rarest_classes(counts, labels, k_rare)
    if skipped:
        g.rare_note = "rarer classes without a labelled image here: " + ", ".join(
            f"{names[a][c]} ({attrs[a]}, train {counts[a][c]})" for a, c in skipped)
    cells, here = [], "val" if split == "val" else "pool"
    for a, c in chosen:
        rows = np.flatnonzero(labels[:, a] == c)
        tiles = [tile(r, a) for r in rows[:per_rare]]
        g.rare.append((a, c, int(counts[a][c]), tiles))
        right = int((pred[rows, a] == c).sum())
        cells.append((None, [(_short(names[a][c]), "black"), (f"({attrs[a]})", "black"),
                             (f"train {counts[a][c]}, {here} {len(rows)}", "black"), (f"right {right}/{len(rows)}",
                                                                                   "black")]))
        cells += [(t.path, [("right" if t.right else "WRONG", "darkgreen" if t.right else "firebrick"),
                            (f"pred: {_short(t.pred)}", "darkgreen" if t.right else "firebrick"),
                            (f"p = {t.p:.2f}", "darkgreen" if t.right else "firebrick")]) for t in tiles]
        cells += [(None, [])] * (per_rare - len(tiles))
    if chosen:
        g.rare_file = f"rare-{stem}.png"
        draw_grid(cells, files / g.rare_file,
                  f"{entry_label}: the {len(chosen)} rarest classes (by training count) on {split}, the first "
                  f"{per_rare} images of each\nand what it predicted (green right, red wrong)", per_rare + 1)
    return g


def per_class_links(g: Gallery) -> dict:
    """(attribute index, class) -> the per-class table's cell: wrong / labelled, linked to the attribute's grid."""
    out = {}
    for (a, c), (wrong, n) in g.per_class.items():
        name = g.mistakes[g.attributes[a]][0]
        out[a, c] = f"[{wrong}/{n}](leaderboard_files/{name})" if wrong and name else f"{wrong}/{n}"
    return out


def render(g: Gallery) -> list[str]:
    """The report's markdown for one entry's galleries."""
    md = [f"### `{g.label}`", "", f"Shown: {g.what}. Images on {g.split}, the dataset's original photos.", ""]
    for attr, (name, tiles, n_wrong, n) in g.mistakes.items():
        if name is None:
            md += [f"- {attr}: no wrong prediction among {n} labelled images", ""]
            continue
        md += [f"<details><summary>{attr}: {len(tiles)} most confident of {n_wrong} wrong / {n}</summary>", "",
               f"![{g.label} {attr} mistakes](leaderboard_files/{name})", "", "</details>", ""]
    if g.rare_file:
        md += [f"Rarest classes by training count, with what `{g.label}` predicted:", "",
               f"![{g.label} rare classes](leaderboard_files/{g.rare_file})", ""]
    if g.rare_note:
        md += [f"_{g.rare_note}._", ""]
    return md
