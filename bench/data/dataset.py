"""FashionDataset reader: finds the root, validates every file, and reports all problems at once.

Layout (read-only, nothing in it is ever written):
    ROOT/img/*.jpg
    ROOT/split/{train,val,test}.txt        one relative image path per line
    ROOT/split/{train,val}_attr.txt        one line per image: 6 space-separated ints
    ROOT/split/list_attr_cloth.txt         class names and the attribute each belongs to (optional)

Text files are UTF-8 (a leading byte-order mark is accepted). The train and val splits must list at least one image
(training and model selection need them); an empty test split is accepted, e.g. to train before the test list exists.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

ATTRIBUTES = ("texture", "sleeve", "length", "neckline", "fabric", "fit")  # the FashionDataset layout's attributes
DEFAULT_CLASS_NAMES = (
    ("floral", "graphic", "striped", "embroidered", "pleated", "solid", "lattice"),
    ("long_sleeve", "short_sleeve", "sleeveless"),
    ("maxi_length", "mini_length", "no_dress"),
    ("crew_neckline", "v_neckline", "square_neckline", "no_neckline"),
    ("denim", "chiffon", "cotton", "leather", "faux", "knit"),
    ("tight", "loose", "conventional"),
)
SPLITS = ("train", "val", "test")
LABELLED_SPLITS = ("train", "val")
EMPTY_SPLIT_NEED = {"train": "training needs at least one image",
                    "val": "model selection and scoring need at least one image"}


class DatasetError(ValueError):
    """Every problem found in a dataset or label file, one 'file:line: message' per entry."""

    def __init__(self, problems: list[str], what: str = "dataset"):
        self.problems = list(problems)
        self.head = f"{len(self.problems)} problem(s) in {what}:"
        super().__init__("\n  ".join([self.head, *self.problems]))

    def summary(self, limit: int = 20) -> str:
        """The message with the first `limit` problems that name a line, a count of the other such ones, and every
        problem of a whole file (a prediction file of the wrong shape has a problem on every line)."""
        lined, whole = [], []
        for p in self.problems:
            (lined if re.match(r".*?:\d+: ", p) else whole).append(p)
        if len(lined) <= limit:
            return str(self)
        rest = f"... and {len(lined) - limit} more line(s) (the first {limit} are shown)"
        return "\n  ".join([self.head, *lined[:limit], rest, *whole])


ZIP_MAGIC = b"PK\x03\x04"


def read_text(path: Path, problems: list[str]) -> str | None:
    """A UTF-8 text file (a leading BOM dropped); None, with the reason appended to `problems`, when it cannot be read
    or is not text."""
    try:
        data = path.read_bytes()
    except OSError as e:
        problems.append(f"{path}: cannot read ({e.strerror})")
        return None
    if data.startswith(ZIP_MAGIC):
        problems.append(f"{path}: is a zip archive, not a text file; give the .txt file inside it")
        return None
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, start = data.count(b"\n", 0, e.start) + 1, data.rfind(b"\n", 0, e.start) + 1
        column = len(data[start:e.start].decode("utf-8")) + 1  # in characters; everything before e.start decodes
        problems.append(f"{path}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column {column})")
        return None


# What ends a line, as editors and the csv module count lines: not str.splitlines' form feed, vertical tab or Unicode
# separators (a line number in a message must be the one an editor shows).
LINE_BREAK = re.compile(r"\r\n|\r|\n")


def read_lines(path: Path, problems: list[str]) -> list[str] | None:
    """The lines of a UTF-8 text file (see read_text), split at \\n, \\r\\n and \\r only; None when it cannot be
    read."""
    text = read_text(path, problems)
    if text is None:
        return None
    lines = LINE_BREAK.split(text)
    return lines[:-1] if lines[-1] == "" else lines


_END = "\ufdd0end-of-file\ufdd0"  # a Unicode noncharacter: no real CSV holds it


def read_csv_rows(path: Path, problems: list[str]) -> tuple[list[tuple[int, list[str]]], bool] | None:
    """The rows of a UTF-8 CSV file, each with the line it starts on (a quoted field may hold line breaks; lines end
    at \\n, \\r\\n or \\r only), and whether the whole file was read: False when a quoted field is never closed
    (the problem, with its line and field, is appended; the rows from that line on are not returned, so whole-file
    checks must be skipped). None when the file cannot be read."""
    text = read_text(path, problems)
    if text is None:
        return None
    body = text if not text or text.endswith(("\n", "\r")) else text + "\n"
    reader = csv.reader(io.StringIO(body + _END, newline=""))
    rows, start = [], 1
    try:
        for row in reader:
            if row == [_END]:
                break
            if row and _END in row[-1]:
                problems.append(f"{path}:{start}:{len(row)}: a quoted field opened here is never closed (a missing "
                                f'closing "); the rest of the file was read as this one field, so nothing from line '
                                f"{start} on was checked")
                return rows, False
            rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as e:  # e.g. a field over the csv module's size limit: an unclosed quote in a big file
        problems.append(f"{path}:{start}: cannot read the CSV from this line on ({e}; a quoted field that is never "
                        f"closed does this), so nothing from line {start} on was checked")
        return rows, False
    return rows, True


def attribute_names(num_classes, attributes=None) -> tuple[str, ...]:
    """The attribute names for a schema of `num_classes`: `attributes` when given (a dataset's or run.json's own),
    else the FashionDataset's six for six attributes (run.json files written before attribute names were recorded),
    else attribute_1, attribute_2, ..."""
    if attributes:
        if len(attributes) != len(num_classes):
            raise ValueError(f"{len(attributes)} attribute names {list(attributes)} for {len(num_classes)} attributes")
        return tuple(attributes)
    if len(num_classes) == len(ATTRIBUTES):
        return ATTRIBUTES
    return tuple(f"attribute_{i + 1}" for i in range(len(num_classes)))


def attributes_of(meta: dict) -> tuple[str, ...]:
    """The attribute names a run.json (or an ensemble's) records; older ones recorded none (see attribute_names)."""
    return attribute_names(meta["num_classes"], meta.get("attributes"))


def parse_label_lines(path: Path, num_classes: tuple[int, ...], problems: list[str],
                      expected_lines: int | None = None, attributes=None) -> np.ndarray | None:
    """Read a file of one line per image, one int per attribute (labels or predictions); append each bad line to
    `problems`. An unreadable file gives None."""
    names = attribute_names(num_classes, attributes)
    lines = read_lines(path, problems)
    if lines is None:
        return None
    while lines and not lines[-1].strip():
        lines.pop()
    rows = np.zeros((len(lines), len(num_classes)), dtype=np.int64)
    for i, line in enumerate(lines):
        where = f"{path}:{i + 1}"
        fields = line.split()
        if len(fields) != len(num_classes):
            problems.append(f"{where}: expected {len(num_classes)} integers, found {len(fields)} field(s): {line!r}")
            continue
        for j, (text, k) in enumerate(zip(fields, num_classes)):
            try:
                value = int(text)
            except ValueError:
                problems.append(f"{where}: field {j + 1} ({names[j]}) is not an integer: {text!r}")
                continue
            if not 0 <= value < k:
                problems.append(f"{where}: {names[j]} = {value} is out of range 0..{k - 1}")
            rows[i, j] = value
    if expected_lines is not None and len(lines) != expected_lines:
        problems.append(f"{path}: has {len(lines)} line(s), expected {expected_lines}")
    return rows


def read_class_names(path: Path, problems: list[str]) -> tuple[tuple[str, ...], ...]:
    """`list_attr_cloth.txt`: a count line, a header line, then 'name attribute_type(1..6)' per class."""
    if not path.exists():
        return DEFAULT_CLASS_NAMES
    lines = read_lines(path, problems)
    if lines is None:
        return DEFAULT_CLASS_NAMES
    groups: dict[int, list[str]] = {}
    for i, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            problems.append(f"{path}:{i}: expected 'class_name attribute_type', found {line!r}")
            continue
        groups.setdefault(int(fields[1]), []).append(fields[0])
    if sorted(groups) != list(range(1, len(ATTRIBUTES) + 1)):
        problems.append(f"{path}: attribute types {sorted(groups)} should be exactly 1..{len(ATTRIBUTES)}")
        return DEFAULT_CLASS_NAMES
    return tuple(tuple(groups[t]) for t in sorted(groups))


@dataclass(frozen=True)
class Split:
    name: str
    paths: tuple[str, ...]
    labels: np.ndarray | None  # (N, attributes) int64, None when hidden (test)

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class FashionDataset:
    root: Path
    class_names: tuple[tuple[str, ...], ...]
    splits: dict[str, Split] = field(default_factory=dict)
    attributes: tuple[str, ...] | None = None  # one name per label column; None: see attribute_names
    layout: dict = field(default_factory=lambda: {"layout": "fashion"})  # how to open it again (open_dataset's args)

    def __post_init__(self):
        self.attributes = attribute_names(self.num_classes, self.attributes)

    @property
    def num_classes(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.class_names)

    def files(self, split: str) -> list[Path]:
        return [self.root / p for p in self.splits[split].paths]

    def fingerprint(self) -> str:
        """Identity of the data a model saw: split lists, labels, class names and image byte sizes."""
        h = hashlib.sha256(repr(self.class_names).encode())
        if self.attributes != ATTRIBUTES:  # the FashionDataset's fingerprints stay what they were
            h.update(repr(self.attributes).encode())
        for name in SPLITS:
            s = self.splits[name]
            h.update("\n".join(s.paths).encode())
            if s.labels is not None:
                h.update(s.labels.tobytes())
            h.update(np.array([f.stat().st_size for f in self.files(name)]).tobytes())
        return h.hexdigest()[:16]


def _check_image(path: Path) -> str | None:
    """Decode the image, a JPEG at 1/8 scale (its DCT-domain draft, as the decode cache does at full size), so a
    truncated or corrupt file is reported here with every other problem, not at decode time after run folders exist.
    PIL's verify() reads only the headers: it passed a truncated JPEG. About 0.5 ms per 300 px photo. An image over
    the pixel limit is named as too large (bench/data/opening.py `open_image`), not as corrupt."""
    from bench.data.opening import ImageTooLarge, open_image
    try:
        with open_image(path) as im:
            im.draft("RGB", (1, 1))  # the smallest scale libjpeg offers; other formats decode in full
            im.load()
    except ImageTooLarge as e:
        return str(e)
    except Exception as e:  # PIL raises many types for bad files
        return f"{path}: unreadable or corrupt image ({type(e).__name__}: {e})"
    return None


def reopen_args(layout: dict | None) -> dict:
    """open_dataset's arguments that open a dataset again as run.json's `data_layout` records it (none for the
    FashionDataset layout, or a run.json written before layouts were recorded)."""
    if not layout or layout.get("layout") != "csv":
        return {}
    return {"layout": "csv", "labels": layout.get("labels"), "val_fraction": layout.get("val_fraction"),
            "split_seed": layout.get("split_seed", 0)}


def check_image_files(root: Path, paths) -> list[str]:
    """Decode every listed image that exists (in parallel threads); one problem per unreadable one."""
    existing = [root / p for p in paths if (root / p).is_file()]
    results = Parallel(n_jobs=-1, prefer="threads", batch_size=64)(delayed(_check_image)(f) for f in existing)
    return [r for r in results if r]


def open_fashion_dataset(root: str | Path, check_images: bool = True) -> FashionDataset:
    """Validate a FashionDataset root; raise DatasetError listing every problem found (bench.data.open_dataset
    detects the layout)."""
    root = Path(root)
    problems: list[str] = []
    if not root.is_dir():
        raise DatasetError([f"{root}: dataset folder does not exist"])
    split_dir = root / "split"
    class_names = read_class_names(split_dir / "list_attr_cloth.txt", problems)
    num_classes = tuple(len(c) for c in class_names)
    splits: dict[str, Split] = {}
    seen: dict[str, tuple[str, str, int]] = {}  # normalised image path -> (split, "file:line", line) first listing it
    for name in SPLITS:
        list_file = split_dir / f"{name}.txt"
        if not list_file.exists():
            problems.append(f"{list_file}: missing split file (one relative image path per line)")
            splits[name] = Split(name, (), None)
            continue
        lines = read_lines(list_file, problems)
        listed = [(i, line.strip()) for i, line in enumerate(lines or [], start=1) if line.strip()]
        for i, p in listed:
            if not (root / p).is_file():
                problems.append(f"{list_file}:{i}: image {p!r} is listed but missing")
            first = seen.setdefault(os.path.normpath(p), (name, f"{list_file}:{i}", i))
            if first[0] != name:
                problems.append(f"{list_file}:{i}: image {p!r} is also in split {first[0]!r} ({first[1]})")
            elif first[2] != i:  # it would be trained on, or scored, twice
                problems.append(f"{list_file}:{i}: image {p!r} is listed twice in split {name!r} (first at line "
                                f"{first[2]}); list each image once")
        if lines is not None and not listed and name in EMPTY_SPLIT_NEED:
            problems.append(f"{list_file}: the {name} split is empty; {EMPTY_SPLIT_NEED[name]}")
        paths = tuple(p for _, p in listed)
        labels = None
        if name in LABELLED_SPLITS:
            attr_file = split_dir / f"{name}_attr.txt"
            if not attr_file.exists():
                problems.append(f"{attr_file}: missing label file for split {name!r}")
            else:
                labels = parse_label_lines(attr_file, num_classes, problems)
                if labels is not None and lines is not None and len(labels) != len(paths):
                    problems.append(f"{attr_file}: {len(labels)} label line(s) but {list_file.name} lists "
                                    f"{len(paths)} image(s); the two files must match line for line")
        splits[name] = Split(name, paths, labels)
    if check_images:
        problems.extend(check_image_files(root, seen))
    if problems:
        raise DatasetError(problems, f"dataset {root}")
    return FashionDataset(root, class_names, splits)


def cache_home() -> Path:
    """Where decoded images and the demo dataset live: $FASHION_BENCH_CACHE or ~/.cache/fashion-bench."""
    return Path(os.environ.get("FASHION_BENCH_CACHE", Path.home() / ".cache" / "fashion-bench"))


def class_counts(labels: np.ndarray, num_classes: tuple[int, ...]) -> list[np.ndarray]:
    """Labelled images per class of each attribute (a missing label, -1, counts nowhere)."""
    return [np.bincount(labels[labels[:, a] >= 0, a], minlength=k) for a, k in enumerate(num_classes)]
