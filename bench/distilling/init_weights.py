"""The student's starting weights from a finished run (bench.distill --init RUN/MODEL) or from a `.safetensors` file
written by `bench.export --format safetensors` (MEAL V2: a student that starts from a good model learns more from
the teacher in a short schedule).

The weights are read by the suite's safe loaders only (bench.ensembling.tta.load_trained, which reads through
bench/checkpoints.py, verifying a run's file against its recorded digest; a .safetensors file holds tensors and
metadata, bench/inference/weights_file.py), before any folder is written. Refused (InitError, exit 2): another
model than the student, other attributes or classes than the dataset's, another head (hidden width), a k-fold or
cross-fitted member (several networks, no one to start from), an unfinished run. A run's weights are those that
produced its val probabilities (best.pt: for a refit run the val run's, trained on train only). The student's val
score inherits what chose those weights: a run that selected its epoch or parameters on val is named on the
student's leaderboard row as optimistic; a weights file cannot say what it trained on, and the row says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bench.artifacts import ArtifactError, RunArtifacts, digest, read_run


class InitError(ValueError):
    """--init cannot start this student; bench.distill exits 2."""


@dataclass
class InitWeights:
    label: str                      # RUN/MODEL, or the file's path
    kind: str                       # "run" or "file"
    meta: dict                      # the run.json (or the file's network description) load_trained reads
    checkpoint: Path
    sha256: str
    selected_on_val: bool           # its epoch or parameters were chosen on val (the student inherits that)
    state: dict | None = None       # the network's weights, read once (`load`)

    def load(self) -> None:
        from bench.ensembling.tta import load_trained
        if self.state is None:
            self.state = load_trained(self.meta, self.checkpoint).state_dict()

    def apply(self, model: torch.nn.Module) -> None:
        """Copy the weights into the student (created with the same model, classes and head) and normalise its input
        as they were trained."""
        from bench.ensembling.tta import restore_input_config
        self.load()
        model.load_state_dict(self.state)
        restore_input_config(model, self.meta)

    def record(self) -> dict:
        """run.json's `init` of the student (the leaderboard's init column shows `init`)."""
        return {"init": self.kind, "source": self.label, "checkpoint": str(self.checkpoint), "sha256": self.sha256}

    def identity(self) -> dict:
        """The init's part of the student's config: other weights make it another run."""
        return {"source": self.label, "sha256": self.sha256}

    def note(self) -> str:
        text = f"student initialised from `{self.label}`"
        if self.kind == "file":
            return text + " (a weights file: its training images are not known here)"
        if self.selected_on_val:
            return text + " (its epoch or parameters selected on val: the student inherits that optimism)"
        return text


def resolve_init(spec: str, runs_dir: Path, student: str, num_classes, attributes, class_names,
                 hidden: int) -> InitWeights:
    """The weights --init names, checked against the student and the dataset; InitError naming what differs."""
    from bench.inference.predict import PredictError
    from bench.inference.weights_file import is_weights_file, read_weights_file
    if is_weights_file(spec):
        try:
            _, member = read_weights_file(spec)
        except PredictError as e:
            raise InitError(f"--init {spec}: {e}") from e
        init = InitWeights(str(spec), "file", member.meta, Path(spec), digest(spec)["sha256"], False)
    else:
        folder = Path(runs_dir) / spec
        if not (folder / "run.json").exists() and (Path(spec) / "run.json").exists():
            folder = Path(spec)
        try:
            member = read_run(folder)
        except ArtifactError as e:
            raise InitError(f"--init {spec}: no finished run there ({e}); give RUN/MODEL of a run in "
                            f"{runs_dir}, or a .safetensors file from bench.export") from e
        init = from_run(spec, member)
    check(init, spec, student, num_classes, attributes, class_names, hidden)
    return init


def from_run(spec: str, member: RunArtifacts) -> InitWeights:
    meta = member.meta
    if meta.get("status") != "done":
        raise InitError(f"--init {spec}: {member.dir} is not finished (status {meta.get('status')})")
    if meta.get("kind", "model") != "model" or meta.get("kfold") or meta.get("crossfit"):
        what = "an ensemble entry" if meta.get("kind", "model") != "model" else "a k-fold member (K networks)"
        raise InitError(f"--init {spec}: {member.label} is {what}, not one network to start from; give a run "
                        f"trained by bench.run without --folds")
    ckpt = member.checkpoint("val")
    if not ckpt.exists():
        raise InitError(f"--init {spec}: {member.label} has no weights ({ckpt} missing)")
    recipe = meta.get("config", {}).get("recipe", {})
    chose = recipe.get("select", "last") != "last" or bool(meta.get("from_study"))
    sha = (meta.get("files") or {}).get("best.pt", {}).get("sha256") or digest(ckpt)["sha256"]
    return InitWeights(member.label, "run", meta, ckpt, sha, chose)


def check(init: InitWeights, spec: str, student: str, num_classes, attributes, class_names, hidden: int) -> None:
    meta = init.meta
    model = meta.get("config", {}).get("model")
    if model != student:
        raise InitError(f"--init {spec}: its network is {model}, the student is {student}; give weights of a "
                        f"{student} (or --student {model})")
    if tuple(meta.get("num_classes") or ()) != tuple(num_classes):
        raise InitError(f"--init {spec}: classes per attribute {tuple(meta.get('num_classes') or ())}, the dataset's "
                        f"{tuple(num_classes)}")
    theirs = tuple(meta.get("attributes") or ())
    if theirs and theirs != tuple(attributes):
        raise InitError(f"--init {spec}: attributes {', '.join(theirs)}, the dataset's {', '.join(attributes)}")
    names = meta.get("class_names")
    if names and [list(c) for c in names] != [list(c) for c in class_names]:
        bad = next(i for i, (a, b) in enumerate(zip(names, class_names)) if list(a) != list(b))
        raise InitError(f"--init {spec}: class names of attribute {attributes[bad]} {list(names[bad])}, the "
                        f"dataset's {list(class_names[bad])}")
    theirs_hidden = meta.get("config", {}).get("recipe", {}).get("hidden", 0)
    if theirs_hidden != hidden:
        raise InitError(f"--init {spec}: its heads have hidden width {theirs_hidden}, the student's recipe "
                        f"{hidden}; pass --set hidden={theirs_hidden}")
