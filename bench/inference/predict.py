"""Predict any images with a finished run or an ensemble entry (library of bench.predict).

A plan (`Plan`) says what runs and how, all read from the run folder or the entry, nothing re-fitted on new images:
- `--model RUN/MODEL`: the run's networks (best.pt; a refit run's refit/best.pt, the weights that predicted test; a
  k-fold member's K fold models, averaged as its test probabilities were), its TTA views (default plain and flip,
  the two training stores and the leaderboard's TTA column scores), and the decision rule of the target metric:
  argmax for `overall`, for `class` logit adjustment with tau fitted per attribute on the run's own val
  probabilities at those views (as bench.ensemble fits a member's rule; in-sample on val);
- `--ensemble NAME`: the entry's members (refused when one was retrained since; bench/ensembling/entries.py), views,
  weights, combiner and fitted decision rule (its tau), as the submission used them.
Each image is decoded by the decode cache's decoder at each network's size and resize policy (sources.py) and fed
through the trainer's `predict` (the same float conversion, autocast and view transforms as evaluation), so an image
of the val split gets the probabilities stored in the run's probs_val.npz. A distilled student is a run folder like
any other. `OnnxScorer` runs an exported graph (onnx_export.py) instead, checked against the plan it was made from.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from bench.artifacts import ArtifactError, RunArtifacts, atomic_write, read_run
from bench.data import ColumnClash, attributes_of, format_prediction_csv, prediction_columns
from bench.data.resize import RESIZE
from bench.ensembling.combiners import COMBINERS, combine
from bench.ensembling.decisions import decide, fit_rule, prior_from_counts
from bench.ensembling.ensemble import EnsembleError, member_identity, member_views, tta_mean
from bench.ensembling.entries import entry_dir, read_entry
from bench.ensembling.views import parse_view
from bench.inference.sources import Batch, decoded_batches
from bench.metrics import TARGETS

FORMAT = "1"  # version of the graph metadata written by onnx_export.py (key `fashion_bench`)
INPUT_LAYOUT = "uint8 RGB, NHWC (batch, size, size, 3)"


class PredictError(ValueError):
    """The model, entry or graph cannot be used as asked; bench.predict and bench.export exit 2."""


def member_checkpoints(member: RunArtifacts) -> list[Path]:
    """The weights that predict new images for this run: its test weights (best.pt, or refit/best.pt after --refit),
    or a k-fold member's fold models (their mean made its test probabilities)."""
    if member.meta.get("weights_file"):  # a .safetensors file from bench.export (weights_file.py), inside the folder
        return [member.sub(member.meta["weights_file"], "weights_file")]
    kfold = member.meta.get("kfold") or member.meta.get("crossfit")  # crossfit: bench.run --folds K --pool train
    if kfold:
        return [member.sub(f, "kfold.folds") / "best.pt" for f in kfold["folds"]]
    return [member.checkpoint("test")]


def check_weights(member: RunArtifacts) -> list[Path]:
    """The member's checkpoints; PredictError naming the run and the missing file when it is unfinished or has none."""
    if member.meta.get("status") != "done":
        raise PredictError(f"{member.label} ({member.dir}) is not finished (status {member.meta.get('status')}); "
                           f"finish it: python -m bench.run (the same command resumes it)")
    ckpts = member_checkpoints(member)
    missing = [c for c in ckpts if not c.exists()]
    if missing:
        raise PredictError(f"{member.label} has no weights: {', '.join(map(str, missing))} missing (tune trials keep "
                           f"none; else deleted). Retrain it: python -m bench.run --models "
                           f"{member.meta['config']['model']} --run {member.dir.parent.name} --force")
    return ckpts


@dataclass
class Plan:
    """Everything that turns images into a CSV row: the members and how their probabilities become a decision.
    `metadata()` is what an exported graph carries, and `Plan.from_metadata` reads it back."""
    source: str                          # "model RUN/MODEL" or "ensemble NAME"
    labels: list[str]                    # member labels (run/model)
    inputs: list[tuple[int, str]]        # per member: (size, resize policy)
    views: list[str]
    weights: np.ndarray                  # (M,) or (M, attributes)
    combine: str
    decision: str
    params: dict
    counts: list | None                  # training class counts per attribute (the decision rule's prior)
    metric: str
    attributes: tuple[str, ...]
    class_names: list[list[str]]
    num_classes: tuple[int, ...]
    identity: dict = field(default_factory=dict)   # label -> member_identity (which weights)
    members: list[RunArtifacts] = field(default_factory=list)
    home: Path | None = None             # the run or entry folder (where its cached ONNX graph is kept)

    @property
    def prior(self):
        return prior_from_counts(self.counts) if self.counts is not None else None

    def finish(self, probs: np.ndarray) -> np.ndarray:
        """Combined probabilities -> (N, attributes) class indices by the plan's decision rule."""
        return decide(self.decision, probs, self.num_classes, self.prior, self.params)

    def combined(self, member_probs: list[np.ndarray]) -> np.ndarray:
        """The members' probabilities (each averaged over its networks and views) combined as the entry does."""
        return combine(member_probs, self.weights, self.num_classes, self.combine)

    def metadata(self) -> dict[str, str]:
        """metadata_props of an exported graph: string keys, JSON values."""
        size, policy = self.inputs[0]
        fields = {"source": self.source, "attributes": list(self.attributes), "class_names": self.class_names,
                  "num_classes": list(self.num_classes), "size": size, "resize": policy, "input": INPUT_LAYOUT,
                  "outputs": [f"probs_{i}" for i in range(len(self.attributes))], "views": self.views,
                  "members": self.labels, "member_identity": self.identity, "weights": self.weights.tolist(),
                  "combine": self.combine, "decision": self.decision, "tau": self.params.get("tau"),
                  "decision_params": self.params, "train_class_counts": self.counts, "metric": self.metric}
        return {"fashion_bench": FORMAT, **{k: json.dumps(v) for k, v in fields.items()}}

    @classmethod
    def from_metadata(cls, meta: dict[str, str], where: str) -> "Plan":
        if "fashion_bench" not in meta:
            raise PredictError(f"{where} is not a graph exported by bench.export (its metadata has no fashion_bench "
                               f"key); export one: python -m bench.export --model RUN/MODEL --format onnx")
        if meta["fashion_bench"] != FORMAT:
            raise PredictError(f"{where}: metadata format {meta['fashion_bench']}, this version reads {FORMAT}; "
                               f"export it again with python -m bench.export")
        try:
            m = {k: json.loads(v) for k, v in meta.items() if k != "fashion_bench"}
            RESIZE[m["resize"]]  # a policy this version does not know cannot prepare the images
            return cls(m["source"], m["members"], [(int(m["size"]), m["resize"])] * len(m["members"]), m["views"],
                       np.asarray(m["weights"], float), m["combine"], m["decision"], m["decision_params"],
                       m["train_class_counts"], m["metric"], tuple(m["attributes"]), m["class_names"],
                       tuple(m["num_classes"]), m["member_identity"])
        except (KeyError, ValueError, TypeError) as e:
            raise PredictError(f"{where}: incomplete or unreadable bench.export metadata ({type(e).__name__}: {e}); "
                               f"export it again with python -m bench.export") from e


def _class_names(meta: dict) -> list[list[str]]:
    names = meta.get("class_names")
    return [list(map(str, c)) for c in names] if names else [[str(i) for i in range(k)] for k in meta["num_classes"]]


def plan_model(runs_dir: Path, label: str, metric: str | None = None, views: list[str] | None = None,
               data_root: Path | None = None, device="cpu") -> Plan:
    """A run's plan (see the module docstring); PredictError for a run that is missing, unfinished or weightless."""
    path = Path(runs_dir) / label
    if not (path / "run.json").exists():
        raise PredictError(f"--model {label}: no run folder {path} (no run.json); --model takes RUN/MODEL of "
                           f"{runs_dir}, e.g. default/resnet18")
    try:
        member = read_run(path)
    except ArtifactError as e:
        raise PredictError(str(e)) from e
    if member.meta.get("kind", "model") != "model":
        raise PredictError(f"--model {label}: {path} is not a model run (kind {member.meta.get('kind')})")
    check_weights(member)
    metric = metric or "overall"
    if metric not in TARGETS:
        raise PredictError(f"unknown metric {metric!r}; choose one of {', '.join(TARGETS)}")
    views = list(views or ["plain", "flip"])
    for v in views:
        parse_view(v)
    meta, nc = member.meta, tuple(member.meta["num_classes"])
    rule, params = ("logit_adjusted", None) if metric == "class" else ("argmax", {})
    counts = meta.get("train_class_counts")
    if params is None:
        if counts is None:
            raise PredictError(f"--metric class needs the training class frequencies, which {label}'s run.json does "
                               f"not record (retrain it)")
        try:
            val = member_views(member, views, data_root, device, ("val",))["val"]
        except EnsembleError as e:
            raise PredictError(f"--metric class: cannot fit the decision rule on {label}'s val views: {e}") from e
        if val.get("labels") is None:
            raise PredictError(f"{label}: its val probabilities hold no labels to fit the decision rule on")
        params = fit_rule(rule, tta_mean(val, views), val["labels"], nc, prior_from_counts(counts), metric)
    cfg = meta["config"]
    return Plan(f"model {member.label}", [member.label], [(cfg["size"], cfg["recipe"]["resize"])], views,
                np.ones(1), "mean", rule, params, counts, metric, attributes_of(meta), _class_names(meta), nc,
                {member.label: member_identity(member)}, [member], member.dir)


def plan_ensemble(runs_dir: Path, name: str, metric: str | None = None) -> Plan:
    """An entry's plan; PredictError for a missing entry, a member gone, retrained or weightless, or a --metric
    other than the one the entry was fitted for."""
    try:
        entry, members = read_entry(runs_dir, name)
    except EnsembleError as e:
        raise PredictError(str(e)) from e
    if metric and metric != entry.get("metric", "overall"):
        raise PredictError(f"--metric {metric}: ensemble {name} was fitted for {entry.get('metric')} (its weights and "
                           f"decision rule); omit --metric or build an entry for {metric}: python -m bench.ensemble "
                           f"--metric {metric} --name NAME")
    for m in members:
        check_weights(m)
    COMBINERS[entry.get("combine", "mean")]
    first = members[0].meta
    return Plan(f"ensemble {name}", [m.label for m in members],
                [(m.meta["config"]["size"], m.meta["config"]["recipe"]["resize"]) for m in members],
                list(entry.get("views", ["plain"])), np.asarray(entry["weights"], float), entry.get("combine", "mean"),
                entry.get("decision", "argmax"), entry.get("decision_params") or {},
                entry.get("train_class_counts"), entry.get("metric", "overall"), attributes_of(entry),
                _class_names(entry if entry.get("class_names") else first), tuple(entry["num_classes"]),
                {m.label: member_identity(m) for m in members}, members, entry_dir(runs_dir, name))


class TorchScorer:
    """The plan's networks in PyTorch: a batch's (n, sum classes) combined probabilities. Each network runs as the
    trainer evaluates (`predict`: inference mode, the precision bench/training/precision.py decides for the device,
    `precision` overriding the process's --precision) in its inference form (`inference_net`: BatchNorm folded,
    channels_last), equal to the eager network within float rounding."""

    def __init__(self, plan: Plan, device, batch_size: int = 64, precision: str | None = None):
        import torch
        from bench.ensembling.tta import load_for_inference
        from bench.training.precision import decide
        self.plan, self.device, self.batch_size = plan, torch.device(device), batch_size
        self.numerics = decide(self.device, precision)
        self.networks = [[load_for_inference(m.meta, c).to(self.device) for c in check_weights(m)]
                         for m in plan.members]

    def describe(self) -> str:
        return (f"PyTorch on {self.device} ({self.numerics.precision}, {self.numerics.layout}, BatchNorm folded: "
                f"{self.numerics.reason})")

    def __call__(self, batch: Batch) -> np.ndarray:
        import torch
        from bench.ensembling.views import view_images
        from bench.training.trainer import predict
        per_member = []
        for key, nets in zip(self.plan.inputs, self.networks):
            x = torch.from_numpy(batch.images[key]).permute(0, 3, 1, 2).to(self.device)
            views = {}
            for name in self.plan.views:  # each view: the mean over the member's networks (k-fold: its K models)
                views[name] = np.mean([predict(net, x, self.batch_size, view=lambda xb: view_images(xb, name),
                                               precision=self.numerics.precision).float().cpu().numpy()
                                       for net in nets], 0)
            per_member.append(tta_mean(views, self.plan.views))
        return self.plan.combined(per_member)


@dataclass
class Prediction:
    paths: list[Path]
    probs: np.ndarray                   # (N, sum classes) combined
    pred: np.ndarray                    # (N, attributes) decided
    failed: list[tuple[Path, str]]      # (file, reason), skipped


def predict_files(files: list[Path], plan: Plan, scorer: Callable[[Batch], np.ndarray], batch_size: int = 64,
                  progress: bool = True) -> Prediction:
    """Every file decoded (sources.py), scored and decided; unreadable files collected with their reason."""
    from tqdm import tqdm
    paths, probs, failed = [], [], []
    inputs = sorted(set(plan.inputs))
    with tqdm(total=len(files), unit="img", desc=f"predict ({plan.source})", disable=not progress) as bar:
        for batch in decoded_batches(files, inputs, batch_size):
            if batch.paths:
                probs.append(scorer(batch))
            paths += batch.paths
            failed += batch.failed
            bar.update(len(batch.paths) + len(batch.failed))
    p = np.concatenate(probs) if probs else np.zeros((0, sum(plan.num_classes)), np.float32)
    return Prediction(paths, p, plan.finish(p) if len(p) else np.zeros((0, len(plan.num_classes)), int), failed)


def csv_header(plan: Plan, all_probs: bool = False) -> list[str]:
    """The CSV's columns, the prediction CSV's (bench/data/columns.py `prediction_columns`, as bench.ensemble's
    prediction.csv and bench.score read it): image, then per attribute ATTRIBUTE and ATTRIBUTE_prob (`all_probs`:
    then ATTRIBUTE=CLASS per class). PredictError when two columns would share a name (a run made before the dataset
    reader refused such attribute names, e.g. `colour` and `colour_prob`)."""
    try:
        return prediction_columns(plan.attributes, plan.class_names, True, all_probs)
    except ColumnClash as e:
        raise PredictError(f"{plan.source}: {e}; rename the attribute in the dataset's labels") from e


def csv_text(result: Prediction, plan: Plan, all_probs: bool = False) -> str:
    """One row per image: its path, and per attribute the decided class name and its probability (`all_probs`: then
    every class's probability): the prediction CSV (bench/data/predictions.py `format_prediction_csv`)."""
    csv_header(plan, all_probs)
    return format_prediction_csv([str(p) for p in result.paths], result.pred, plan.attributes, plan.class_names,
                                 result.probs, all_probs)


def write_csv(result: Prediction, plan: Plan, out: Path, all_probs: bool = False) -> Path:
    """The CSV, written atomically (a kill leaves the old file or the new one)."""
    text = csv_text(result, plan, all_probs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: tmp.write_text(text))
    return out


class OnnxScorer:
    """An exported graph (onnx_export.py) in onnxruntime. `expected`: the plan of the --model/--ensemble given with
    it; the graph's metadata must describe the same classes, input, members (the same weights), views, weights,
    combiner and decision rule, else PredictError names each difference."""

    def __init__(self, path: Path, expected: Plan | None = None, providers=None):
        path = Path(path)
        try:
            import onnx
            import onnxruntime as ort
        except ImportError as e:
            raise PredictError(f"--onnx needs onnx and onnxruntime: pip install -e '.[onnx]' ({e})") from e
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:
            raise PredictError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e})") from e
        meta = {p.key: p.value for p in model.metadata_props}
        self.plan = Plan.from_metadata(meta, str(path))
        if expected is not None:
            diff = plan_differences(self.plan, expected)
            if diff:
                raise PredictError(f"{path} does not match {expected.source}: {'; '.join(diff)}. Export it again: "
                                   f"python -m bench.export --{expected.source} --format onnx")
            self.plan = expected
        self.session = ort.InferenceSession(model.SerializeToString(),
                                            providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: Batch) -> np.ndarray:
        x = batch.images[self.plan.inputs[0]]
        return np.concatenate(self.session.run(None, {self.input_name: x}), 1)


def plan_differences(got: Plan, want: Plan) -> list[str]:
    """What an exported graph's plan (`got`) says differently from the plan asked for (`want`)."""
    out = []
    checks = {"attributes": lambda p: list(p.attributes), "class names": lambda p: p.class_names,
              "input size and resize policy": lambda p: sorted(set(p.inputs)), "members": lambda p: p.labels,
              "member weights (retrained since the export?)": lambda p: p.identity, "TTA views": lambda p: p.views,
              "ensemble weights": lambda p: np.round(p.weights, 12).tolist(), "combiner": lambda p: p.combine,
              "decision rule": lambda p: (p.decision, p.params), "metric": lambda p: p.metric}
    for what, get in checks.items():
        a, b = json.loads(json.dumps(get(got))), json.loads(json.dumps(get(want)))
        if a != b:
            out.append(f"{what}: graph {a}, expected {b}")
    return out
