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
student's augmentation mirrored it; `online`: exactly the student's augmented batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.artifacts import RunArtifacts, find_runs
from bench.data.images import load_images
from bench.ensembling.combiners import COMBINERS, TORCH_COMBINERS, combine
from bench.ensembling.ensemble import EnsembleError, check_members, check_names, member_identity
from bench.ensembling.entries import read_entry
from bench.ensembling.tta import load_trained
from bench.training.trainer import autocast, predict


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

    @property
    def num_classes(self) -> tuple[int, ...]:
        return tuple(self.members[0].meta["num_classes"])

    @property
    def dataset(self) -> str:
        return self.members[0].meta["config"]["dataset"]

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
                             "checkpoint": str(m.checkpoint(split)), **member_identity(m)}
                            for m, wi in zip(self.members, w)],
                "members_selected_on_val": self.selected_on_val(),
                "entry_created": (self.entry or {}).get("created")}

    def identity(self) -> dict:
        """The teacher's part of the student's config: a member retrained since makes it another run."""
        return {"name": self.name, "combine": self.combine, "weights": self.weights.tolist(),
                "members": {m.label: member_identity(m) for m in self.members}}


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
            raise TeacherError(f"teacher {name}: member {m.label} is a k-fold member (K models, each trained on a "
                               f"part of train + val): it has no one model to label training images with; use "
                               f"members trained on train/val (bench.run without --folds)")
        if not m.checkpoint("val").exists():
            raise TeacherError(f"teacher {name}: member {m.label} has no checkpoint {m.checkpoint('val')}")
    return teacher


def member_probs(member: RunArtifacts, ckpt: Path, files: list[Path], device, batch: int = 128,
                 model: torch.nn.Module | None = None) -> dict[str, np.ndarray]:
    """{"plain", "flip"}: one member's (N, sum classes) probabilities for `files`, decoded at the member's own size
    and resize policy, from checkpoint `ckpt`."""
    cfg = member.meta["config"]
    model = model or load_trained(member.meta, ckpt).to(device)
    images = load_images(files, cfg["size"], cfg["recipe"]["resize"], progress=False)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(device)
    return {view: predict(model, x, batch, flip=view == "flip").cpu().numpy() for view in ("plain", "flip")}


def cached_targets(teacher: Teacher, split: str, files: list[Path], device) -> dict[str, np.ndarray]:
    """The teacher's combined probabilities {"plain", "flip"} (N, sum classes) for `files`: each member from the
    checkpoint of `split`, combined per attribute with the entry's weights and combiner."""
    per = [member_probs(m, m.checkpoint(split), files, device) for m in teacher.members]
    return {view: combine([p[view] for p in per], teacher.weights, teacher.num_classes, teacher.combine)
            .astype(np.float32) for view in ("plain", "flip")}


def combine_torch(probs: list[torch.Tensor], weights: np.ndarray, num_classes, method: str) -> torch.Tensor:
    """combiners.combine on torch tensors, on their device: a combiner with a torch form (combiners.TORCH_COMBINERS)
    directly; any other registered combiner through its numpy function (a host round trip)."""
    if method not in TORCH_COMBINERS:
        out = combine([p.float().cpu().numpy() for p in probs], weights, num_classes, method)
        return torch.from_numpy(out.astype(np.float32)).to(probs[0].device)
    w = np.asarray(weights, float)
    if w.ndim == 1:
        w = np.repeat(w[:, None], len(num_classes), 1)
    parts = []
    for a, block in enumerate(zip(*[torch.split(p.float(), list(num_classes), 1) for p in probs])):
        wa = torch.tensor(w[:, a] / max(w[:, a].sum(), 1e-12), dtype=torch.float32, device=block[0].device)
        parts.append(TORCH_COMBINERS[method](torch.stack(block), wa.view(-1, 1, 1)))
    return torch.cat(parts, 1)


class OnlineTeacher:
    """Every member on the device, run on the student's augmented batch (float pixels 0..255, the student's input
    size; resized bilinearly, antialiased, to a member's own size where it differs) in inference mode and
    autocast; returns the combined probabilities as an ordinary tensor (usable in the student's autograd graph)."""

    def __init__(self, teacher: Teacher, split: str, device):
        self.teacher = teacher
        self.models = [load_trained(m.meta, m.checkpoint(split)).to(device).eval() for m in teacher.members]
        self.sizes = [m.meta["config"]["size"] for m in teacher.members]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        probs = []
        with torch.inference_mode():
            for model, size in zip(self.models, self.sizes):
                xm = x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear",
                                                                 align_corners=False, antialias=True)
                with autocast(x.device):
                    logits = model(xm)
                probs.append(torch.cat([z.float().softmax(-1) for z in logits], 1))
            out = combine_torch(probs, self.teacher.weights, self.teacher.num_classes, self.teacher.combine)
        return out.clone()  # outside inference mode: a normal tensor
