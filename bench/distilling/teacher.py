"""The teacher: an ensemble entry's members, weights and combiner (or a comma list of runs, uniformly averaged),
checked to be the models the entry was fitted with, and its combined probabilities on images.

An entry (RUNS/_ensembles/NAME/run.json, written by bench.ensemble) records each member's checkpoint identity
(`member_identity`: path, size and modification time of the weights of each split, and the run's finish time); a
member retrained since (`bench.run --force`, a new --refit) no longer matches, and its weights are not the ones the
entry's weights were fitted for: the teacher is refused, naming the member. Entries written before identities were
recorded are checked by time: a member that finished after the entry was created was retrained. The check is
bench/ensembling/entries.py read_entry, the one bench.predict and bench.export use.

The teacher's targets come from the weights that produced each split's probabilities (RunArtifacts.checkpoint):
`val` (best.pt) for a distillation on train; `test` (a refit member's refit/best.pt, else best.pt) for --refit,
whose student trains on train + val and predicts test like the members' refit models. The entry's TTA views are
not averaged into a target: the teacher sees the student's own view of each image (plain, or mirrored when the
student's augmentation mirrored it; `online`: exactly the student's augmented batch; `views`: the stored views).

In-sample or out-of-fold (`Teacher.targets`): a member trained on train (bench.run) labels its own training images:
in-sample targets. A member cross-fitted over train (`bench.run --folds K --pool train`, run.json `crossfit`)
labels each training image with the one fold model that never trained on it (`member_networks`): out-of-fold
targets. In cached mode those are its stored probs_train_oof.npz; online and views run that fold model on the view.
Images outside its train split (the val images of --refit, --unlabelled images) get the mean of its K fold models,
as its val and test predictions do. A teacher's members are all of one kind, and cross-fitted members share one
partition of train (same K and fold seed): anything else is refused (TeacherError, exit 2).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.artifacts import RunArtifacts, find_runs, load_npz
from bench.data.images import load_images
from bench.ensembling.combiners import COMBINERS, combine
from bench.ensembling.ensemble import EnsembleError, check_members, check_names, member_identity
from bench.ensembling.entries import read_entry
from bench.ensembling.tta import load_for_inference
from bench.training.kfold import OOF_TRAIN
from bench.training.trainer import MappedImages, autocast, predict

IN_SAMPLE, OUT_OF_FOLD = "in-sample", "out-of-fold"  # Teacher.targets


class TeacherError(ValueError):
    """The teacher cannot be used (unknown, retrained members, k-fold members...); bench.distill exits 2."""


@dataclass
class Teacher:
    name: str
    kind: str                       # "ensemble" (an entry) or "runs" (a comma list, uniform mean)
    members: list[RunArtifacts]
    weights: np.ndarray             # (M,) or (M, attributes), as the entry's
    combine: str                    # a combiner of bench/ensembling/combiners.py
    views: list[str]                # the entry's TTA views (recorded; the teacher sees the student's view)
    entry: dict | None = None
    root: Path | None = None        # the student's dataset root (training images are matched against it)

    @property
    def num_classes(self) -> tuple[int, ...]:
        return tuple(self.members[0].meta["num_classes"])

    @property
    def dataset(self) -> str:
        return self.members[0].meta["config"]["dataset"]

    @property
    def targets(self) -> str:
        """OUT_OF_FOLD when the members are cross-fitted over train (each training image's target from models that
        never trained on it), else IN_SAMPLE (load_teacher refuses a mix)."""
        return OUT_OF_FOLD if is_crossfit(self.members[0]) else IN_SAMPLE

    def selected_on_val(self) -> list[str]:
        """Members whose epoch or parameters were chosen on val (their scores, and the student's, are optimistic)."""
        out = []
        for m in self.members:
            select = m.meta.get("config", {}).get("recipe", {}).get("select")
            if select != "last" or m.meta.get("from_study"):
                out.append(m.label)
        return out

    def describe(self, split: str) -> dict:
        """What run.json records of the teacher: members with the checkpoints the targets came from."""
        w = self.weights if self.weights.ndim == 1 else self.weights.mean(1)
        return {"name": self.name, "kind": self.kind, "combine": self.combine, "views": self.views,
                "weights": self.weights.tolist(),
                "members": [{"label": m.label, "weight": float(wi), "model": m.meta["config"]["model"],
                             "size": m.meta["config"]["size"],
                             **({"checkpoints": [str(c) for c in fold_checkpoints(m)],
                                 "crossfit": {k: m.meta["crossfit"][k] for k in ("k", "seed", "signature")}}
                                if is_crossfit(m) else {"checkpoint": str(m.checkpoint(split))}),
                             **member_identity(m)}
                            for m, wi in zip(self.members, w)],
                "members_selected_on_val": self.selected_on_val(),
                "targets": self.targets,
                "entry_created": (self.entry or {}).get("created")}

    def identity(self) -> dict:
        """The teacher's part of the student's config: a member retrained since makes it another run."""
        return {"name": self.name, "combine": self.combine, "weights": self.weights.tolist(),
                "members": {m.label: member_identity(m) for m in self.members}}


def is_crossfit(member: RunArtifacts) -> bool:
    """A member cross-fitted over the train split (bench.run --folds K --pool train)."""
    return isinstance(member.meta.get("crossfit"), dict)


def fold_checkpoints(member: RunArtifacts) -> list[Path]:
    """A cross-fitted member's K fold models' weights, in fold order (folders checked to stay inside it)."""
    return [member.sub(f, "crossfit.folds") / "best.pt" for f in member.meta["crossfit"]["folds"]]


def check_kinds(name: str, members: list[RunArtifacts]) -> None:
    """TeacherError unless the members' training targets are of one kind (all in-sample or all out-of-fold) and the
    cross-fitted ones split train the same way (same K, fold seed and partition)."""
    crossfit = [m.label for m in members if is_crossfit(m)]
    plain = [m.label for m in members if not is_crossfit(m)]
    if crossfit and plain:
        raise TeacherError(f"teacher {name} mixes in-sample and out-of-fold training targets: {', '.join(crossfit)} "
                           f"cross-fitted over train (bench.run --folds K --pool train), {', '.join(plain)} trained on "
                           f"all of train (their targets on the training images are in-sample); use members of one "
                           f"kind")
    parts = {}
    for m in members:
        if is_crossfit(m):
            cf = m.meta["crossfit"]
            parts.setdefault((cf.get("k"), cf.get("seed"), cf.get("signature")), []).append(m.label)
    if len(parts) > 1:
        groups = "; ".join(f"K {k}, --fold-seed {seed} ({sig}): {', '.join(labels)}"
                           for (k, seed, sig), labels in parts.items())
        raise TeacherError(f"teacher {name}: its cross-fitted members split train into different folds ({groups}); "
                           f"train them with the same --folds and --fold-seed on the same data")


def load_teacher(runs_dir: Path, name: str) -> Teacher:
    """RUNS/_ensembles/NAME when it exists, else NAME as a comma list of runs (run or run/model labels)."""
    runs_dir = Path(runs_dir)
    entry_file = runs_dir / "_ensembles" / name / "run.json"
    if entry_file.exists():
        try:  # the entry, its members, and the refusal of a member retrained since (shared with bench.predict)
            entry, members = read_entry(runs_dir, name)
        except EnsembleError as e:
            raise TeacherError(f"teacher {name}: {e}") from e
        teacher = Teacher(name, "ensemble", members, np.asarray(entry["weights"], float), entry.get("combine", "mean"),
                          list(entry.get("views", ["plain"])), entry)
    else:
        labels = [x.strip() for x in name.split(",") if x.strip()]
        try:
            check_names(runs_dir, labels, None)
        except EnsembleError as e:
            raise TeacherError(f"--teacher {name}: no ensemble entry {entry_file.parent} and not a list of runs: "
                               f"{e}") from e
        members = [m for m in find_runs(runs_dir, labels, done_only=True) if m.meta.get("kind", "model") == "model"]
        teacher = Teacher(name, "runs", members, np.full(len(members), 1.0 / max(len(members), 1)), "mean",
                          ["plain"])
    if not teacher.members:
        raise TeacherError(f"teacher {name}: no members")
    try:
        check_members(teacher.members)
    except EnsembleError as e:
        raise TeacherError(f"teacher {name}: {e}") from e
    COMBINERS[teacher.combine]
    for m in teacher.members:
        if m.meta.get("status") != "done":
            raise TeacherError(f"teacher {name}: member {m.label} is not finished (status {m.meta.get('status')})")
        if m.meta.get("kfold"):
            raise TeacherError(f"teacher {name}: member {m.label} is a k-fold member over train + val (its models "
                               f"trained on val images, which the student is scored on); use members trained on "
                               f"train (bench.run), or cross-fitted over train alone (bench.run --folds K --pool "
                               f"train: out-of-fold targets)")
        for ckpt in fold_checkpoints(m) if is_crossfit(m) else [m.checkpoint("val")]:
            if not ckpt.exists():
                raise TeacherError(f"teacher {name}: member {m.label} has no checkpoint {ckpt}")
        if is_crossfit(m) and not (m.dir / OOF_TRAIN).exists():
            raise TeacherError(f"teacher {name}: member {m.label} has no {m.dir / OOF_TRAIN} (its out-of-fold "
                               f"training probabilities); finish it: the bench.run --folds --pool train command "
                               f"again")
    check_kinds(name, teacher.members)
    return teacher


def member_networks(member: RunArtifacts, split: str, files: list[Path],
                    root: Path | None = None) -> list[tuple[Path, np.ndarray]]:
    """The networks that label `files` for this member and each one's weight per file: (checkpoint, (N,) weights),
    the member's probability of file i being sum_k weight_k[i] p_k(i) (a network is run only where its weight is
    > 0). In-sample: the checkpoint of `split`, weight 1 everywhere. Cross-fitted: fold model f has weight 1 on the
    training images of fold f (the one model that never trained on them) and 1/K on any file outside its train
    split. `root`: the dataset root the files are under (default the member's)."""
    if not is_crossfit(member):
        return [(member.checkpoint(split), np.ones(len(files)))]
    fold, _ = oof_rows(member, files, root)
    k = len(member.meta["crossfit"]["folds"])
    return [(ckpt, np.where(fold == f, 1.0, np.where(fold < 0, 1.0 / k, 0.0)))
            for f, ckpt in enumerate(fold_checkpoints(member))]


def oof_rows(member: RunArtifacts, files: list[Path], root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(fold, row) per file of a cross-fitted member: the fold and the row of probs_train_oof.npz of each file
    that is one of its training images (its recorded paths under `root`, default the member's dataset root,
    matched by resolved path), -1 for the others."""
    z = load_npz(member.dir / OOF_TRAIN)
    root = Path(root or member.meta["data_root"])
    where = {str((root / p).resolve()): i for i, p in enumerate(z["paths"])}
    rows = np.array([where.get(str(Path(f).resolve()), -1) for f in files], dtype=np.int64)
    return np.where(rows >= 0, z["fold"][np.maximum(rows, 0)], -1), rows


def images_for(files: list[Path], size: int, policy: str, device, stream: bool):
    """`files` decoded at `size` by `policy`: one uint8 (N, 3, S, S) tensor on `device`, or (`stream`) a
    MappedImages reading batches from the memory-mapped cache file (nothing held in memory)."""
    images = load_images(files, size, policy, progress=False, mmap=stream)
    if stream:
        return MappedImages([(images, None)], device)
    return torch.from_numpy(images).permute(0, 3, 1, 2).to(device)


def member_probs(member: RunArtifacts, ckpt: Path, files: list[Path], device, batch: int = 128,
                 model: torch.nn.Module | None = None, stream: bool = False) -> dict[str, np.ndarray]:
    """{"plain", "flip"}: one network's (N, sum classes) probabilities for `files`, decoded at the member's own size
    and resize policy, from checkpoint `ckpt`; `stream`: read from the memory-mapped decode cache batch by batch
    (bench.distill --data-mode stream), never held in memory whole."""
    cfg = member.meta["config"]
    model = model or load_for_inference(member.meta, ckpt).to(device)
    x = images_for(files, cfg["size"], cfg["recipe"]["resize"], device, stream)
    return {view: predict(model, x, batch, flip=view == "flip").cpu().numpy() for view in ("plain", "flip")}


def member_targets(member: RunArtifacts, split: str, files: list[Path], device, stream: bool = False,
                   root: Path | None = None) -> dict[str, np.ndarray]:
    """{"plain", "flip"}: one member's probabilities for `files` as the cached mode's targets. A cross-fitted
    member's training images take its stored out-of-fold probabilities (probs_train_oof.npz); every other file is
    predicted by member_networks' networks, each only on the files it has weight on."""
    out = {view: np.zeros((len(files), sum(member.meta["num_classes"])), np.float64) for view in ("plain", "flip")}
    todo = np.ones(len(files), bool)
    if is_crossfit(member):
        _, rows = oof_rows(member, files, root)
        stored = load_npz(member.dir / OOF_TRAIN)
        todo = rows < 0
        for view in out:
            out[view][~todo] = stored[view][rows[~todo]]
    for ckpt, weight in member_networks(member, split, files, root):
        run = np.flatnonzero(todo & (weight > 0))
        if len(run):
            got = member_probs(member, ckpt, [files[i] for i in run], device, stream=stream)
            for view in out:
                out[view][run] += weight[run, None] * got[view]
    return {view: p.astype(np.float32) for view, p in out.items()}


def cached_targets(teacher: Teacher, split: str, files: list[Path], device,
                   stream: bool = False) -> dict[str, np.ndarray]:
    """The teacher's combined probabilities {"plain", "flip"} (N, sum classes) for `files`: each member's
    (member_targets: in-sample from the checkpoint of `split`, cross-fitted out of fold), combined per attribute
    with the entry's weights and combiner."""
    per = [member_targets(m, split, files, device, stream, teacher.root) for m in teacher.members]
    return {view: combine([p[view] for p in per], teacher.weights, teacher.num_classes, teacher.combine)
            .astype(np.float32) for view in ("plain", "flip")}


class OnlineTeacher:
    """Every member's networks on the device, run on the student's augmented batch (float pixels 0..255, the
    student's input size; resized bilinearly, antialiased, to a member's own size where it differs) in inference
    mode and autocast; returns the combined probabilities (combiners.combine, on the device) as an ordinary tensor
    (usable in the student's autograd graph). `files` (the training split's images, in row order) lets a
    cross-fitted member give each row its out-of-fold network (member_networks); `__call__(x, idx)` then needs the
    batch's rows. Without `files` every member must be in-sample (one network, every row)."""

    def __init__(self, teacher: Teacher, split: str, device, files: list[Path] | None = None):
        self.teacher = teacher
        self.members = []  # per member: its size and [(network, weight per row or None: every row)]
        for m in teacher.members:
            if files is None:
                if is_crossfit(m):
                    raise ValueError(f"{m.label} is cross-fitted: its networks need the training rows (files)")
                nets = [(m.checkpoint(split), None)]
            else:
                nets = [(c, torch.as_tensor(w, dtype=torch.float32, device=device))
                        for c, w in member_networks(m, split, files, teacher.root)]
            self.members.append((m.meta["config"]["size"],
                                 [(load_for_inference(m.meta, c).to(device), w) for c, w in nets]))

    def __call__(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        probs = []
        with torch.inference_mode():
            for size, nets in self.members:
                xm = x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear",
                                                                 align_corners=False, antialias=True)
                total = None
                for model, weight in nets:
                    if weight is None:
                        p = self._probs(model, xm)
                        total = p if total is None else total + p
                        continue
                    w = weight[idx.to(weight.device)]
                    rows = torch.nonzero(w > 0).flatten()
                    if total is None:
                        total = torch.zeros(len(x), sum(self.teacher.num_classes), device=x.device)
                    if len(rows) == len(x):
                        total += w[:, None] * self._probs(model, xm)
                    elif len(rows):
                        total[rows] += w[rows, None] * self._probs(model, xm[rows])
                probs.append(total)
            out = combine(probs, self.teacher.weights, self.teacher.num_classes, self.teacher.combine)
        return out.clone()  # outside inference mode: a normal tensor

    @staticmethod
    def _probs(model, x: torch.Tensor) -> torch.Tensor:
        with autocast(x.device):
            logits = model(x)
        return torch.cat([z.float().softmax(-1) for z in logits], 1)
