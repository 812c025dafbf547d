"""Built-in demo dataset: procedurally drawn garments in the exact FashionDataset layout.

Every attribute is visibly encoded, so a model can genuinely learn it:
  texture   pattern drawn over the garment (flowers, a big graphic, stripes, stitched hems, pleat lines, none, grid)
  sleeve    coloured sleeve down to the wrist, to the elbow, or bare arms
  length    long dress, short dress, or a top with trousers
  neckline  round, V or square skin cut-out at the collar, or a closed collar
  fabric    colour family and surface: blue speckled denim, pale see-through chiffon, flat cotton,
            dark glossy leather, noisy brown faux fur, ribbed knit
  fit       body width: narrow, wide and flared, or in between
Labels are drawn independently from the real train-split class frequencies, so the imbalance is the real one.
Test labels go to ROOT/hidden/test_attr.txt, outside split/, for scoring demo predictions only.

With a schema (`--schema colour:2,category:5,season:11 [--missing 0.1]`) it writes the CSV layout instead
(bench/data/csv_layout.py): ROOT/labels.csv with columns image, split and one per attribute, whose classes are named
`<attribute>_<index>`, the index zero-padded to the same width within an attribute (two digits, three from 101
classes on), so the layout's sorted class order is the generation order; classes are drawn with falling frequencies
(class c about 1 / (c + 1)); each image shows one horizontal band per attribute, its colour the class's hue.
`missing` is the fraction of train and val cells left empty (missing labels); every class still appears labelled in
train. Test labels go to ROOT/hidden/test_labels.csv (image and class name per attribute: the truth CSV that
bench.score reads), not to labels.csv.

`hidden_test_labels` reads a demo's hidden test labels for scoring (bench.ensemble's demo score, bench.score
--split test).

    python -m bench.demo --out DIR [--seed 0] [--train 800 --val 200 --test 200 --width 96 --height 128]
                                   [--schema NAME:CLASSES,... [--missing FRACTION]]
"""
from __future__ import annotations

import csv
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bench.data.columns import IMAGE, SPLIT, attribute_name_problems
from bench.data.dataset import DEFAULT_CLASS_NAMES, cache_home

# Real train-split class counts (5000 images) per attribute: the demo samples labels with these frequencies.
REAL_COUNTS = (
    (768, 853, 334, 422, 109, 2408, 106),
    (1523, 862, 2615),
    (488, 951, 3561),
    (2086, 826, 19, 2069),
    (310, 702, 3399, 105, 48, 436),
    (749, 279, 3972),
)
TEXTURE, SLEEVE, LENGTH, NECK, FABRIC, FIT = range(6)


@dataclass(frozen=True)
class DemoSpec:
    seed: int = 0
    train: int = 800
    val: int = 200
    test: int = 200
    width: int = 96
    height: int = 128
    schema: tuple[tuple[str, int], ...] = ()  # (attribute, classes) each: the CSV layout; () the FashionDataset's
    missing: float = 0.0                      # CSV layout only: fraction of train/val label cells left empty


def parse_schema(text: str) -> tuple[tuple[str, int], ...]:
    """'colour:2,category:5' -> (('colour', 2), ('category', 5)); ValueError naming the bad entry, or an attribute
    name the CSV layout would refuse (bench/data/columns.py)."""
    out = []
    for part in text.split(","):
        name, _, k = part.strip().partition(":")
        if not name or not k.isdigit() or int(k) < 2:
            raise ValueError(f"schema entry {part!r}: expected NAME:CLASSES with CLASSES >= 2")
        out.append((name, int(k)))
    if len({n for n, _ in out}) != len(out):
        raise ValueError(f"schema {text!r} names an attribute twice")
    names = [n for n, _ in out]
    bad = attribute_name_problems(names, [class_names_of(n, k) for n, k in out])
    if bad:
        raise ValueError(f"schema {text!r}: " + "; ".join(why for _, why in bad))
    return tuple(out)


def class_names_of(attribute: str, k: int) -> list[str]:
    """A CSV demo attribute's class names in generation order, `<attribute>_<index>` zero-padded to one width (at
    least two digits) so that sorting them, as the CSV layout does, keeps this order."""
    width = max(2, len(str(k - 1)))
    return [f"{attribute}_{c:0{width}d}" for c in range(k)]


def sample_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    cols = [rng.choice(len(c), size=n, p=np.array(c) / sum(c)) for c in REAL_COUNTS]
    return np.stack(cols, axis=1).astype(np.int64)


def _fabric_surface(rng, fabric: int, h: int, w: int) -> tuple[np.ndarray, float]:
    """(h, w, 3) float colour field of the cloth and its opacity."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    noise = rng.normal(0, 1, (h, w, 1)).astype(np.float32)
    if fabric == 0:  # denim: mid/dark blue, diagonal twill speckle
        base = np.array([40, 70, 140]) + rng.uniform(-15, 15, 3)
        surf = base + 18 * noise + 10 * np.sin((xx + yy) * 1.6)[..., None]
        return surf, 1.0
    if fabric == 1:  # chiffon: pale pastel, half see-through
        base = np.array([235, 215, 225]) + rng.uniform(-25, 10, 3)
        return base + 4 * noise, 0.55
    if fabric == 2:  # cotton: any mid colour, flat matte
        base = rng.uniform(70, 210, 3)
        return base + 3 * noise, 1.0
    if fabric == 3:  # leather: near black with a glossy highlight band
        base = np.array([30, 25, 22]) + rng.uniform(0, 15, 3)
        gloss = 90 * np.exp(-((xx - w * rng.uniform(0.3, 0.7)) ** 2) / (2 * (w * 0.06) ** 2))
        return base + gloss[..., None] + 3 * noise, 1.0
    if fabric == 4:  # faux fur: warm brown, strong per-pixel noise
        base = np.array([150, 110, 70]) + rng.uniform(-20, 20, 3)
        return base + 45 * noise, 1.0
    base = rng.uniform(80, 200, 3)  # knit: horizontal ribs
    return base + 35 * np.sin(yy * 2.2)[..., None] + 3 * noise, 1.0


def _pattern(rng, texture: int, mask: np.ndarray, box: tuple[int, int, int, int]) -> Image.Image | None:
    """Overlay (L mask) for the texture, drawn inside the garment's bounding box."""
    if texture == 5:  # solid
        return None
    h, w = mask.shape
    x0, y0, x1, y1 = box
    ov = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(ov)
    bw = max(1, (x1 - x0))
    if texture == 0:  # floral: scattered small flowers
        for _ in range(max(5, bw * (y1 - y0) // 220)):
            cx, cy, r = rng.uniform(x0, x1), rng.uniform(y0, y1), max(2, bw * 0.05)
            for a in range(5):
                px, py = cx + r * np.cos(a * 1.257), cy + r * np.sin(a * 1.257)
                d.ellipse([px - r * 0.6, py - r * 0.6, px + r * 0.6, py + r * 0.6], fill=255)
    elif texture == 1:  # graphic: one big shape on the chest
        cx, cy, r = (x0 + x1) / 2, y0 + (y1 - y0) * 0.28, bw * 0.22
        shape = rng.integers(3)
        if shape == 0:
            d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=255)
        elif shape == 1:
            d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=255)
        else:
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif texture == 2:  # striped: bold horizontal bands
        period = max(4, int(bw * 0.18))
        for y in range(y0 + int(rng.integers(period)), y1, period):
            d.rectangle([x0, y, x1, y + period // 2 - 1], fill=255)
    elif texture == 3:  # embroidered: stitched crosses along the hem and the collar
        step = max(3, bw // 10)
        for yb in (y0 + 2, y1 - 3):
            for x in range(x0, x1, step):
                d.line([x - 1, yb - 1, x + 1, yb + 1], fill=255)
                d.line([x - 1, yb + 1, x + 1, yb - 1], fill=255)
    elif texture == 4:  # pleated: fine vertical folds over the lower part
        for x in range(x0, x1, 3):
            d.line([x, (y0 + y1) // 2, x, y1], fill=255)
    elif texture == 6:  # lattice: diagonal grid
        step = max(5, bw // 5)
        for k in range(-h, w + h, step):
            d.line([k, 0, k + h, h], fill=255)
            d.line([k, 0, k - h, h], fill=255)
    return ov


def draw_garment(labels: np.ndarray, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """One (height, width, 3) uint8 picture showing the six attributes in `labels`."""
    W, H = width, height
    s = rng.uniform(0.92, 1.08)
    cx = W / 2 + rng.uniform(-0.05, 0.05) * W
    top = H * (0.17 + rng.uniform(-0.02, 0.02))
    half = W * s * (0.15, 0.27, 0.2)[labels[FIT]]
    flare = (1.0, 1.35, 1.1)[labels[FIT]]
    bottom = H * (0.95, 0.62, 0.5)[labels[LENGTH]]
    waist = top + (bottom - top) * 0.45

    bg = np.array(rng.uniform(190, 250, 3), np.float32)
    img = np.broadcast_to(bg, (H, W, 3)).copy() + rng.normal(0, 3, (H, W, 1))
    skin_rgb = np.array([224, 180, 150]) + rng.uniform(-40, 20, 3)
    pants_rgb = rng.uniform(30, 90, 3)

    skin, cloth, pants = (Image.new("L", (W, H), 0) for _ in range(3))
    ds, dc, dp = ImageDraw.Draw(skin), ImageDraw.Draw(cloth), ImageDraw.Draw(pants)
    head_r = W * 0.09
    ds.ellipse([cx - head_r, top - 2.6 * head_r, cx + head_r, top - 0.6 * head_r], fill=255)
    ds.rectangle([cx - head_r * 0.45, top - 0.8 * head_r, cx + head_r * 0.45, top + 2], fill=255)
    arm_w = W * 0.07
    wrist = H * 0.58
    for side in (-1, 1):  # bare arms; sleeves are drawn over them
        x = cx + side * (half + arm_w * 0.5)
        ds.polygon([(x - arm_w / 2, top + 2), (x + arm_w / 2, top + 2),
                    (x + arm_w / 2 + side * 3, wrist), (x - arm_w / 2 + side * 3, wrist)], fill=255)
    if labels[LENGTH] == 2:  # trousers under a top
        dp.rectangle([cx - half * 0.9, bottom - 2, cx - 1, H * 0.97], fill=255)
        dp.rectangle([cx + 1, bottom - 2, cx + half * 0.9, H * 0.97], fill=255)
    else:
        ds.rectangle([cx - half * 0.5, bottom - 2, cx - half * 0.2, H * 0.98], fill=255)
        ds.rectangle([cx + half * 0.2, bottom - 2, cx + half * 0.5, H * 0.98], fill=255)
    hem = half * (flare if labels[LENGTH] != 2 else 1.0) * (1.15 if labels[LENGTH] == 0 else 1.0)
    dc.polygon([(cx - half, top), (cx + half, top), (cx + half * 0.92, waist), (cx + hem, bottom),
                (cx - hem, bottom), (cx - half * 0.92, waist)], fill=255)
    sleeve_end = (wrist, top + (wrist - top) * 0.4, None)[labels[SLEEVE]]
    if sleeve_end is not None:
        for side in (-1, 1):
            x = cx + side * (half + arm_w * 0.5)
            dc.polygon([(x - arm_w * 0.75, top), (x + arm_w * 0.75, top),
                        (x + arm_w * 0.75 + side * 3, sleeve_end), (x - arm_w * 0.75 + side * 3, sleeve_end)],
                       fill=255)
    nw, nd = half * 0.45, (bottom - top) * 0.22
    neck = labels[NECK]
    if neck == 0:
        dc.pieslice([cx - nw, top - nw * 0.9, cx + nw, top + nw * 0.9], 0, 180, fill=0)
    elif neck == 1:
        dc.polygon([(cx - nw, top - 1), (cx + nw, top - 1), (cx, top + nd)], fill=0)
    elif neck == 2:
        dc.rectangle([cx - nw, top - 1, cx + nw, top + nd * 0.6], fill=0)
    else:  # no neckline: a closed collar band up the neck
        dc.rectangle([cx - head_r * 0.6, top - 0.7 * head_r, cx + head_r * 0.6, top + 1], fill=255)

    m_skin, m_cloth, m_pants = (np.asarray(m, np.float32)[..., None] / 255 for m in (skin, cloth, pants))
    img = img * (1 - m_skin) + skin_rgb * m_skin
    img = img * (1 - m_pants) + pants_rgb * m_pants
    surface, alpha = _fabric_surface(rng, labels[FABRIC], H, W)
    ys, xs = np.nonzero(m_cloth[..., 0] > 0)
    box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())) if len(xs) else (0, 0, W, H)
    base = surface.mean(axis=(0, 1))
    contrast = np.where(base.mean() > 128, base * 0.25, 255 - (255 - base) * 0.15)
    ov = _pattern(rng, labels[TEXTURE], m_cloth[..., 0], box)
    if ov is not None:
        m_ov = np.asarray(ov, np.float32)[..., None] / 255
        surface = surface * (1 - m_ov) + contrast * m_ov
    a = m_cloth * alpha
    img = img * (1 - a) + surface * a
    img = img * rng.uniform(0.9, 1.1)  # lighting
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_bands(labels, num_classes, rng, width: int, height: int) -> np.ndarray:
    """One horizontal band per attribute; its hue says the class (-1, missing, still draws the drawn class)."""
    img = np.full((height, width, 3), 128, np.float32)
    edges = np.linspace(0, height, len(num_classes) + 1).astype(int)
    for a, (c, k) in enumerate(zip(labels, num_classes)):
        h = 6 * c / k
        x = 1 - abs(h % 2 - 1)
        rgb = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(h) % 6]
        img[edges[a]:edges[a + 1]] = np.array(rgb) * 200 + 30
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_csv_demo(out: Path, spec: DemoSpec) -> Path:
    names = [n for n, _ in spec.schema]
    ks = [k for _, k in spec.schema]
    classes = [class_names_of(n, k) for n, k in spec.schema]
    truth = []
    rng = np.random.default_rng([spec.seed, 2])
    (out / "img").mkdir(parents=True, exist_ok=True)
    (out / "hidden").mkdir(exist_ok=True)
    rows, index = [], 0
    for split, n in (("train", spec.train), ("val", spec.val), ("test", spec.test)):
        labels = np.stack([rng.choice(k, n, p=(p := 1 / np.arange(1, k + 1)) / p.sum()) for k in ks], 1)
        if split == "train":  # every class labelled at least once in train
            for a, k in enumerate(ks):
                labels[:min(k, n), a] = np.arange(min(k, n))
        shown = labels.copy()
        if split != "test" and spec.missing:
            drop = rng.random(labels.shape) < spec.missing
            if split == "train":
                drop[:max(ks)] = False
            labels = np.where(drop, -1, labels)
        for row, true in zip(labels, shown):
            rel = f"img/{index:05d}.jpg"
            Image.fromarray(draw_bands(true, ks, np.random.default_rng([spec.seed, 3, index]), spec.width,
                                       spec.height)).save(out / rel, quality=92)
            cells = ["" if split == "test" or c < 0 else names_[c] for names_, c in zip(classes, row)]
            rows.append([rel, split, *cells])
            if split == "test":
                truth.append([rel, *(names_[c] for names_, c in zip(classes, true))])
            index += 1
    with open(out / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([[IMAGE, SPLIT, *names], *rows])
    with open(out / HIDDEN_CSV, "w", newline="") as f:
        csv.writer(f).writerows([[IMAGE, *names], *truth])
    (out / "hidden" / "README.txt").write_text(
        "Demo test labels (image and class name per attribute), for scoring only. Score a test prediction\n"
        "(bench.ensemble's prediction.csv or a bench.predict CSV of the test images); ROOT is this dataset folder\n"
        "(the one holding hidden/):\n"
        "\n"
        "    python -m bench.score PREDICTION.csv --truth ROOT/hidden/test_labels.csv --data ROOT\n"
        "\n"
        f"Generated by bench.demo with {asdict(spec)}.\n")
    return out


def write_demo(out: str | Path, spec: DemoSpec = DemoSpec()) -> Path:
    """Write a complete FashionDataset at `out` (which must not exist yet, or be empty); with `spec.schema`, a
    CSV-layout dataset of that schema."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new --out folder")
    if spec.schema:
        return _write_csv_demo(out, spec)
    (out / "img").mkdir(parents=True, exist_ok=True)
    (out / "split").mkdir(exist_ok=True)
    (out / "hidden").mkdir(exist_ok=True)
    rng = np.random.default_rng([spec.seed, 0])
    counts = {"train": spec.train, "val": spec.val, "test": spec.test}
    index = 0
    for split, n in counts.items():
        labels = sample_labels(rng, n)
        paths = []
        for row in labels:
            rel = f"img/{index:05d}.jpg"
            pic = draw_garment(row, np.random.default_rng([spec.seed, 1, index]), spec.width, spec.height)
            Image.fromarray(pic).save(out / rel, quality=92)
            paths.append(rel)
            index += 1
        (out / "split" / f"{split}.txt").write_text("\n".join(paths) + "\n")
        attr = "\n".join(" ".join(map(str, r)) for r in labels) + "\n"
        target = out / ("hidden/test_attr.txt" if split == "test" else f"split/{split}_attr.txt")
        target.write_text(attr)
    names = [(n, t + 1) for t, group in enumerate(DEFAULT_CLASS_NAMES) for n in group]
    (out / "split" / "list_attr_cloth.txt").write_text(
        f"{len(names)}\nattribute_name   attribute_type\n" + "".join(f"{n:<20} {t}\n" for n, t in names))
    (out / "hidden" / "README.txt").write_text(
        "Demo test labels (one line per image of split/test.txt, 6 class indices), for scoring only. Score a test\n"
        "prediction (bench.ensemble's prediction.txt); ROOT is this dataset folder (the one holding hidden/):\n"
        "\n"
        "    python -m bench.score PREDICTION.txt --data ROOT --split test\n"
        "\n"
        f"Generated by bench.demo with {asdict(spec)}.\n")
    return out


HIDDEN_CSV = Path("hidden/test_labels.csv")   # a CSV demo's test labels: a truth CSV (image, class names)
HIDDEN_TXT = Path("hidden/test_attr.txt")    # a FashionDataset demo's: one line of class indices per test image


def hidden_test_labels(root: str | Path, attributes, class_names, paths) -> tuple[np.ndarray, str] | None:
    """A demo's hidden test labels as class indices of `class_names`, one row per image of `paths` (the test split's,
    in its order), and the file they came from; None when `root` has none. DatasetError (file:line) when they do not
    fit the schema or the images."""
    from bench.data.predictions import align_truth, read_predictions, read_truth_csv
    root = Path(root)
    if (root / HIDDEN_CSV).is_file():
        truth = read_truth_csv(root / HIDDEN_CSV, attributes, class_names)
        return align_truth(truth, list(paths), "the test split"), str(root / HIDDEN_CSV)
    if (root / HIDDEN_TXT).is_file():
        nc = tuple(len(c) for c in class_names)
        return read_predictions(root / HIDDEN_TXT, nc, len(paths), attributes), str(root / HIDDEN_TXT)
    return None


def ensure_demo(spec: DemoSpec = DemoSpec()) -> Path:
    """The default demo dataset, generated once into the cache folder and reused."""
    root = cache_home() / f"demo-s{spec.seed}-{spec.train}-{spec.val}-{spec.test}-{spec.width}x{spec.height}"
    if (root / "split" / "list_attr_cloth.txt").exists():
        return root
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"[demo] no --data and no $FASHION_DATA: generating the built-in demo dataset at {root}")
    write_demo(tmp, spec)
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return root
