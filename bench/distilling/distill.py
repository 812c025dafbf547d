"""Distil a teacher (an ensemble entry, or a list of runs) into one student model (library of bench.distill).

The student is any zoo or timm model, trained by the shared trainer (bench/training/) into a normal run folder
RUNS/<run>/<student>/ (claimed, resumable bit for bit, atomic artifacts, skipped when finished), so the leaderboard
ranks it like any run and `bench.ensemble --runs <run>` fits its decision rule. Its loss is kd.py's: per attribute
head, alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * the recipe's loss on the label.

Modes:
- `cached`: the teacher's combined probabilities for every training image, in its plain and its mirrored view,
  are computed once (each member once per view) and stored in the student's run folder
  (`teacher_targets.npz`, keyed to the teacher's checkpoints and the image list, so a resumed run reuses them and a
  changed teacher recomputes them). Each step, an image the student's augmentation mirrored gets the mirrored view's
  target, any other the plain view's; the crop, rotation and colour jitter of the augmentation are not seen by the
  teacher (a crop gets the whole image's target). Costs about one training run plus one teacher pass per view.
  Cached targets on the teacher's own training images are in-sample: the members trained on them, so they are more
  confident (closer to the labels) than the teacher is on new images.
- `online` (default on CUDA; "function matching", Beyer et al. 2022): every member runs on the student's augmented
  batch at each step (inference mode, autocast, on the training device), so the target always matches exactly what
  the student sees; nothing is precomputed. Costs a forward pass of every member per step.
- `views` (default on the CPU: function matching without a GPU; views.py): the teacher labels V fixed augmented
  views of every training image once (crop, flip, rotation, jitter and, with `mixup`, a partner image, all drawn
  from a recorded seed and stored with the probabilities in `teacher_views.npz`), and epoch e of the student trains
  on exactly view e mod V. Costs V teacher passes once, then what a cached student costs.

Targets in-sample or out-of-fold (teacher.py): members trained on train label their own training images
(in-sample: more confident than on new images, close to the labels); members cross-fitted over train (`bench.run
--folds K --pool train`) label each training image with the fold model that never saw it (out-of-fold; cached: their
probs_train_oof.npz). run.json (`distill.targets`) and the leaderboard row say which.
`init`: the student starts from a finished run's weights or an exported .safetensors file (init_weights.py).

Honesty: the student is scored on val like any run; without --refit no val image is ever in its training split, so
no teacher target of a val image reaches it (checked before training). Teacher members that chose their epoch or
parameters on val are recorded and named on the student's leaderboard row (the student inherits that optimism).
`refit`: like `bench.run --refit`, after the val run a second distillation on train + val for the epochs the val
run used, whose test predictions become the student's; its teacher targets come from the members' test weights
(their refit models, where they have them). `unlabelled` adds images (the test split, a folder, or a list file)
that only the teacher labels: label -1 for every attribute, so only the KD term learns from them; when any of them
is an image of the test split (however named: `test`, a folder or a list file holding such images) this is
transductive, and run.json (`transductive`, `test_images`) and the leaderboard row say so.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from bench.artifacts import load_npz, save_probs, write_run
from bench.data import DatasetError, FashionDataset, Split, open_dataset, reopen_args
from bench.data.dataset import cache_home, check_image_files
from bench.distilling import DEFAULT_VIEWS
from bench.distilling.kd import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, DistillLoss
from bench.distilling.init_weights import InitWeights, resolve_init
from bench.distilling.teacher import (IN_SAMPLE, OUT_OF_FOLD, OnlineTeacher, Teacher, TeacherError, cached_targets,
                                      is_crossfit, load_teacher, oof_rows)
from bench.distilling.views import VIEWS_FILE, Views, load_or_label_views
from bench.training.kfold import OOF_TRAIN, refit as refit_model
from bench.training.train import (ImageStore, choose_data_mode, decoded_bytes, demo_settings, resolve_recipe,
                                  train_model)
from bench.training.trainer import Trainer

MODES = ("auto", "cached", "online", "views")
TARGETS_FILE = "teacher_targets.npz"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def auto_mode(device) -> str:
    """The mode `auto` picks: `online` on CUDA (a forward pass of every member per step is cheap there), `views` on
    any other device (V teacher passes once; the reasons are beside DEFAULT_VIEWS in bench/distilling/__init__.py)."""
    return "online" if torch.device(device).type == "cuda" else "views"


class DistillTrainer(Trainer):
    """The shared Trainer with the distillation loss: each step's teacher targets come from `source(rows, mirrored,
    x, view)` (rows of the training split, which images the augmentation mirrored, the augmented batch, the stored
    view replayed or None) and reach the loss before the step (DistillLoss.set_targets). With `views` (the views
    mode) the batch is not drawn but replayed: epoch e renders stored view e mod V of its rows (views.Views.render),
    and mixup views pass the partners' labels and lam to the loss. Everything else (schedule, EMA, checkpoints,
    resume, OOM micro-batches) is the Trainer's."""

    def __init__(self, *args, source, temperature: float, alpha: float, views: Views | None = None, **kw):
        super().__init__(*args, **kw)
        if self.dist.enabled:
            raise ValueError("distillation runs in one process (no torchrun)")
        self.criterion = DistillLoss(self.criterion, temperature, alpha)
        self.source = source
        self.views = views
        self._batch = None

    def augment_rows(self, idx: torch.Tensor, images: torch.Tensor | None = None):
        """The Trainer's augmentation (the same draws), or in the views mode the stored view e mod V of these rows."""
        if self.views is None:
            return super().augment_rows(idx, images)
        images = self.train.x[idx] if images is None else images
        return self.views.render(images, idx, self.epoch % self.views.count, self.train.x)

    def augment_batch(self, idx: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """The augmented batch, remembering the rows, which images were mirrored and the view replayed."""
        x, mirror = self.augment_rows(idx, images)
        self._batch = (idx, mirror, None if self.views is None else self.epoch % self.views.count)
        return x

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        idx, mirror, view = self._batch
        mix = None
        if self.views is not None and self.views.partner is not None:
            j = self.views.partner[view][idx.to(self.views.partner.device)].to(self.train.y.device)
            mix = (self.train.y[j], self.views.lam[view][idx.to(self.views.lam.device)].to(y.device))
        self.criterion.set_targets(self.source(idx, mirror, x, view), mix)
        return super()._step(x, y)


class CachedSource:
    """Targets looked up per row: the mirrored view's for mirrored images, else the plain view's."""

    def __init__(self, targets: dict[str, np.ndarray], device):
        self.plain = torch.from_numpy(targets["plain"]).to(device)
        self.flip = torch.from_numpy(targets["flip"]).to(device)

    def __call__(self, idx, mirror, x, view=None) -> torch.Tensor:
        return torch.where(mirror[:, None], self.flip[idx], self.plain[idx])


class OnlineSource:
    def __init__(self, teacher: OnlineTeacher):
        self.teacher = teacher

    def __call__(self, idx, mirror, x, view=None) -> torch.Tensor:
        return self.teacher(x, idx)


class ViewsSource:
    """The stored probabilities of the replayed view's rows (float16 on disk, float32 to the loss)."""

    def __init__(self, views: Views, device):
        self.probs = views.probs.to(device)

    def __call__(self, idx, mirror, x, view=None) -> torch.Tensor:
        return self.probs[view][idx.to(self.probs.device)].float()


def targets_key(teacher: Teacher, split: str, files: list[Path]) -> str:
    """Identity of a set of cached targets: the teacher (members' checkpoints of `split`, weights, combiner) and
    the images, in order."""
    h = hashlib.sha256(json.dumps({"teacher": teacher.identity(), "split": split}, sort_keys=True).encode())
    h.update("\n".join(map(str, files)).encode())
    return h.hexdigest()[:16]


def load_or_compute_targets(teacher: Teacher, split: str, files: list[Path], run_dir: Path, device,
                            stream: bool = False) -> dict:
    """The cached targets in run_dir/teacher_targets.npz when they are this teacher's for these images, else
    computed now (`stream`: the members' images read from the memory-mapped decode cache batch by batch) and stored
    there (atomically)."""
    path, key = Path(run_dir) / TARGETS_FILE, targets_key(teacher, split, files)
    if path.exists():
        z = load_npz(path)
        if str(z["key"]) == key:
            print(f"  teacher targets: reusing {path} ({len(z['plain'])} images)")
            return {"plain": z["plain"], "flip": z["flip"]}
        print(f"  teacher targets: {path} is another teacher's or other images': recomputing")
    how = ("the members' stored out-of-fold probabilities for the training images, their fold models for any "
           "other" if teacher.targets == OUT_OF_FOLD else f"{len(teacher.members)} member(s) x 2 views (plain, flip)")
    print(f"  teacher targets ({teacher.targets}): {how}; {len(files)} images (once; stored in {path})")
    targets = cached_targets(teacher, split, files, device, stream=stream)
    save_probs(path, **targets, key=np.array(key), files=np.array([str(f) for f in files]))
    return targets


@dataclass
class ViewsSettings:
    """The views mode's settings (bench.distill --views, --mixup; the seed is the student's --seed)."""
    count: int = DEFAULT_VIEWS
    mixup: float | None = None
    seed: int = 0

    def record(self) -> dict:
        return {"count": self.count, "mixup": self.mixup, "seed": self.seed, "file": VIEWS_FILE,
                "replay": "epoch e trains on stored view e mod count"}


def trainer_factory(teacher: Teacher, mode: str, split: str, files: list[Path], temperature: float, alpha: float,
                    views: ViewsSettings | None = None, init: InitWeights | None = None, progress: bool = False):
    """make_trainer for train_model: a DistillTrainer whose teacher labels `files` (the rows of the training split,
    in order) from the members' `split` weights; `init`: the student's starting weights (a resumed run's state
    replaces them)."""
    def make(model, recipe, train, val, run_dir, counts, **kw):
        if len(train.x) != len(files):
            raise RuntimeError(f"training split has {len(train.x)} rows, the teacher's image list {len(files)}")
        device = train.x.device
        if init is not None:
            init.apply(model)
        replay = None
        if mode == "cached":
            source = CachedSource(load_or_compute_targets(teacher, split, files, run_dir, device,
                                                          stream=train.mode == "stream"), device)
        elif mode == "online":
            source = OnlineSource(OnlineTeacher(teacher, split, device, files))
        else:
            online = OnlineTeacher(teacher, split, device, files)
            replay = load_or_label_views(online, teacher.identity(), split, files, run_dir, train.x, recipe,
                                         kw["size"], train.x.shape[-1], views.count, views.seed, views.mixup,
                                         progress)
            del online  # the members' networks are needed no more
            source = ViewsSource(replay, device)
        return DistillTrainer(model, recipe, train, val, run_dir, counts, source=source, temperature=temperature,
                              alpha=alpha, views=replay, **kw)
    return make


@dataclass
class ExtendedDataset(FashionDataset):
    """The dataset with extra, teacher-labelled images appended to its train split (labels -1). Its fingerprint
    stays the original dataset's, so the student ranks and ensembles with the runs of that dataset; the extra images
    are part of the student's config (`distill.unlabelled`)."""
    base_fingerprint: str = ""

    def fingerprint(self) -> str:
        return self.base_fingerprint


def unlabelled_paths(ds: FashionDataset, source: str) -> tuple[list[str], dict]:
    """Paths of --unlabelled images (relative to the dataset root, or absolute) and what run.json records. Whether
    the student sees the test split is decided by the images, whatever named them: `test_images` counts those that
    resolve to an image of the dataset's test split, and any makes the run `transductive`."""
    if source == "test":
        paths = list(ds.splits["test"].paths)
        info = {"source": "test"}
    else:
        where = Path(source)
        if where.is_dir():
            paths = sorted(str(p.resolve()) for p in where.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            info = {"source": str(where.resolve()), "kind": "folder"}
        elif where.is_file():
            lines = [ln.strip() for ln in where.read_text(encoding="utf-8-sig").splitlines()]
            paths = [str((where.parent / ln).resolve()) if not Path(ln).is_absolute() else ln for ln in lines if ln]
            info = {"source": str(where.resolve()), "kind": "list file"}
        else:
            raise DatasetError([f"--unlabelled {source}: not `test`, a folder of images or a list file"])
        problems = [f"--unlabelled {source}: {p}: no such image" for p in paths if not (ds.root / p).is_file()]
        problems += check_image_files(ds.root, [p for p in paths if (ds.root / p).is_file()])
        if not paths:
            problems.append(f"--unlabelled {source}: no images found")
        if problems:
            raise DatasetError(problems, "unlabelled images")
    split_of = {str((ds.root / p).resolve()): s for s in ("train", "val", "test") for p in ds.splits[s].paths}
    splits = [split_of.get(str((ds.root / p).resolve())) for p in paths]  # each image's split, by its file
    clash = [f"--unlabelled {source}: {p}: already in the {s} split" for p, s in zip(paths, splits)
             if s in ("train", "val")]
    if clash:
        raise DatasetError(clash, "unlabelled images")
    seen = splits.count("test")
    info.update(transductive=seen > 0, test_images=seen, images=len(paths))
    return paths, info


def with_unlabelled(ds: FashionDataset, paths: list[str]) -> FashionDataset:
    tr = ds.splits["train"]
    labels = np.concatenate([tr.labels, np.full((len(paths), tr.labels.shape[1]), -1, tr.labels.dtype)])
    splits = {**ds.splits, "train": Split("train", tuple(tr.paths) + tuple(paths), labels)}
    return ExtendedDataset(ds.root, ds.class_names, splits, ds.attributes, ds.layout,
                           base_fingerprint=ds.fingerprint())


@dataclass
class DistillSpec:
    """What to distil into what, and how: bench.distill's options (its --help says what each does)."""
    teacher: str
    student: str
    runs_dir: Path = Path("runs")
    run: str | None = None              # default distill-<teacher>
    recipe: str | None = None           # zoo/recipes.py preset; None: by the student's init
    overrides: dict = field(default_factory=dict)  # recipe fields (bench.run's flags)
    metric: str = "overall"
    mode: str = "auto"                  # MODES; auto: auto_mode(device), views on the CPU, online on CUDA
    temperature: float = DEFAULT_TEMPERATURE
    alpha: float = DEFAULT_ALPHA
    refit: bool = False
    unlabelled: str | None = None       # test | FOLDER | LISTFILE
    data: Path | None = None            # dataset root (default: the one the teacher's members trained on)
    layout: dict | None = None          # open_dataset's CSV-layout arguments (default: the members')
    seed: int = 0
    force: bool = False
    progress: bool = True
    data_mode: str = "auto"
    compile: str = "off"
    checkpoint_every: float | None = None
    views: int | None = None            # mode views: how many stored views (default DEFAULT_VIEWS)
    mixup: float | None = None          # mode views: mixup's Beta(alpha, alpha); None: no mixup
    init: str | None = None             # RUN/MODEL or an exported .safetensors file: the student's start


class Prepared(NamedTuple):
    """What `prepare` checked and resolved before anything is written."""
    teacher: Teacher
    mode: str
    ds: FashionDataset
    info: dict | None                   # the --unlabelled images' record
    recipe: object
    size: int
    views: ViewsSettings | None
    init: InitWeights | None


def default_run_name(teacher: str) -> str:
    return "distill-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", teacher).strip("-")


def provenance(teacher: Teacher, mode: str, temperature: float, alpha: float, unlabelled: dict | None,
               views: ViewsSettings | None = None, init: InitWeights | None = None) -> str:
    """The student's leaderboard note: what it learned from (mode, targets in-sample or out-of-fold), where it
    started, and what of that was chosen on val or seen test."""
    how = mode if views is None else f"views: {views.count} stored views" + \
        (f", mixup {views.mixup:g}" if views.mixup else "")
    text = f"distilled from `{teacher.name}` ({how}, T {temperature:g}, alpha {alpha:g}); targets {teacher.targets}"
    if chose := teacher.selected_on_val():
        text += f"; teacher members selected on val: {', '.join(chose)} (the student inherits that optimism)"
    if init is not None:
        text += "; " + init.note()
    if unlabelled:
        text += f"; --unlabelled {unlabelled['source']} ({unlabelled['images']} images labelled by the teacher"
        if not unlabelled.get("transductive"):
            text += ")"
        elif unlabelled["source"] == "test":
            text += ", transductive: the test split)"
        else:
            text += f", transductive: {unlabelled['test_images']} of them from the test split)"
    return text


def check_views(spec: DistillSpec, mode: str) -> ViewsSettings | None:
    """The views mode's settings; ValueError for --views or --mixup outside it, V < 1 or mixup <= 0."""
    if mode != "views":
        for flag, value in (("--views", spec.views), ("--mixup", spec.mixup)):
            if value is not None:
                raise ValueError(f"{flag} {value}: only in the views mode (--mode views, or auto on the CPU: the "
                                 f"teacher labels stored views); the mode here is {mode}")
        return None
    count = DEFAULT_VIEWS if spec.views is None else spec.views
    if count < 1:
        raise ValueError(f"--views {count}: must be at least 1 (how many augmented views of each training image "
                         f"the teacher labels)")
    if spec.mixup is not None and not spec.mixup > 0:
        raise ValueError(f"--mixup {spec.mixup}: mixup's Beta(alpha, alpha) needs alpha > 0 (leave --mixup out for "
                         f"no mixup)")
    return ViewsSettings(count, spec.mixup, spec.seed)


def prepare(spec: DistillSpec, device) -> Prepared:
    """Everything checked before any training, before anything is written (Prepared). Raises TeacherError,
    InitError, DatasetError, ValueError."""
    if spec.mode not in MODES:
        raise ValueError(f"mode {spec.mode!r}: one of {', '.join(MODES)}")
    if not spec.temperature > 0:
        raise ValueError(f"--temperature {spec.temperature}: must be > 0")
    if not 0 <= spec.alpha <= 1:
        raise ValueError(f"--alpha {spec.alpha}: must be in [0, 1]")
    mode = spec.mode if spec.mode != "auto" else auto_mode(device)
    views = check_views(spec, mode)
    teacher = load_teacher(spec.runs_dir, spec.teacher)
    first = teacher.members[0].meta
    root = Path(spec.data or first["data_root"])
    ds = open_dataset(root, **(spec.layout or reopen_args(first.get("data_layout"))))
    if ds.fingerprint() != teacher.dataset:
        raise TeacherError(f"the dataset at {root} (fingerprint {ds.fingerprint()}) is not the one the teacher's "
                           f"members trained on ({teacher.dataset}); pass --data")
    if ds.num_classes != teacher.num_classes:
        raise TeacherError(f"teacher classes {teacher.num_classes} differ from the dataset's {ds.num_classes}")
    teacher.root = ds.root
    for m in teacher.members:
        if is_crossfit(m):  # every training image must have its out-of-fold target
            fold, _ = oof_rows(m, ds.files("train"), ds.root)
            if (fold < 0).any():
                missing = ds.splits["train"].paths[int(np.flatnonzero(fold < 0)[0])]
                raise TeacherError(f"teacher {teacher.name}: {m.label}'s {OOF_TRAIN} has no out-of-fold target for "
                                   f"the training image {missing}; retrain it on this dataset")
    info = None
    if spec.unlabelled:
        paths, info = unlabelled_paths(ds, spec.unlabelled)
        ds = with_unlabelled(ds, paths)
    overrides = spec.overrides
    if spec.data is None and root.resolve().parent == cache_home().resolve() and root.name.startswith("demo-"):
        overrides = demo_settings(None, overrides, root)  # the built-in demo data: bench.run's quick settings
    recipe, size = resolve_recipe(spec.student, spec.recipe, overrides, spec.metric)
    init = None
    if spec.init:
        init = resolve_init(spec.init, spec.runs_dir, spec.student, ds.num_classes, ds.attributes, ds.class_names,
                            recipe.hidden)
        init.load()  # read (and verified) now: a file the safe loader refuses stops here, nothing written
    return Prepared(teacher, mode, ds, info, recipe, size, views, init)


def teacher_bytes(teacher: Teacher, n: int) -> int:
    """Bytes the cached mode decodes for the teacher: n images at each member's own size (once per size and
    resize policy)."""
    keys = {(m.meta["config"]["size"], m.meta["config"]["recipe"]["resize"]) for m in teacher.members}
    return sum(n * side * side * 3 for side, _ in keys)


def distill(spec: DistillSpec, device, on_epoch=None) -> dict:
    """Train (or resume, or skip when finished) the student; returns its run.json contents. Raises TeacherError,
    DatasetError or ValueError before anything is written when the teacher or the options do not fit."""
    teacher, mode, ds, info, recipe, size, views, init = prepare(spec, device)
    run = spec.run or default_run_name(spec.teacher)
    model_dir = Path(spec.runs_dir) / run / spec.student
    train_files = ds.files("train")
    val_files = {str(f.resolve()) for f in ds.files("val")}
    leaked = [f for f in train_files if str(f.resolve()) in val_files]
    if leaked:  # never: val images are not in train, and --unlabelled refuses them
        raise ValueError(f"{len(leaked)} val image(s) in the student's training images, e.g. {leaked[0]}")
    settings = {"teacher": spec.teacher, "mode": mode, "temperature": spec.temperature, "alpha": spec.alpha,
                "unlabelled": info}
    # the config keeps the fields it had before `test_images` was counted, so those run folders resume; the views
    # and init enter it only where used (a student of before them keeps its config)
    config_info = info and {k: v for k, v in info.items() if k != "test_images"}
    extra_config = {"distill": {**settings, "unlabelled": config_info, "identity": teacher.identity(),
                                **({"views": {"count": views.count, "mixup": views.mixup, "seed": views.seed}}
                                   if views else {}),
                                **({"init": init.identity()} if init else {})}}
    extra_meta = {"distill": {**settings, "targets": teacher.targets, "teacher_detail": teacher.describe("val"),
                              "refit": spec.refit,
                              "labelled_by_teacher": {"train": len(ds.splits["train"]) - (info or {}).get("images", 0),
                                                      "unlabelled": (info or {}).get("images", 0),
                                                      "val": 0 if not spec.refit else "refit only"},
                              "views": views.record() if views else None,
                              "init": init.record() if init else None,
                              "provenance": provenance(teacher, mode, spec.temperature, spec.alpha, info, views,
                                                       init),
                              "in_sample_note": "the teacher's targets on its own training images are in-sample "
                                                "(its members trained on them)" if teacher.targets == IN_SAMPLE
                                                else None}}
    if init:
        extra_meta["init"] = init.record()  # where the student's weights started (the leaderboard's init column)
    needed = decoded_bytes(ds, [(recipe, size)]) + (teacher_bytes(teacher, len(train_files)) if mode == "cached"
                                                    else 0)
    dm, why = choose_data_mode(spec.data_mode, needed, device)
    print(f"[data] {dm}: {why}")
    print(f"[distill] teacher {teacher.name} ({teacher.kind}: {', '.join(m.label for m in teacher.members)}; "
          f"{teacher.combine}) -> {spec.student}, {mode}, T {spec.temperature:g}, alpha {spec.alpha:g}; "
          f"artifacts in {model_dir}")
    store = ImageStore(ds, device, progress=spec.progress, mode=dm, mode_reason=why)
    if spec.force:
        for f in (TARGETS_FILE, VIEWS_FILE):
            (model_dir / f).unlink(missing_ok=True)
            (model_dir / "refit" / f).unlink(missing_ok=True)
    kw = dict(progress=spec.progress, force=spec.force, compile=spec.compile, checkpoint_every=spec.checkpoint_every,
              on_epoch=on_epoch)
    meta = train_model(spec.student, ds, store, recipe, size, model_dir, spec.seed, extra_meta=extra_meta,
                       extra_config=extra_config,
                       make_trainer=trainer_factory(teacher, mode, "val", train_files, spec.temperature, spec.alpha,
                                                    views, init, spec.progress),
                       **kw)
    if spec.refit:
        pool_files = train_files + ds.files("val")
        meta = refit_model(spec.student, ds, store, recipe, size, model_dir, spec.seed, extra_config=extra_config,
                           make_trainer=trainer_factory(teacher, mode, "test", pool_files, spec.temperature,
                                                        spec.alpha, views, init, spec.progress), **kw)
        meta["distill"]["refit_teacher"] = teacher.describe("test")
        write_run(meta, model_dir)
    return meta
