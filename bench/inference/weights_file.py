"""A run's weights as one `.safetensors` file to share (library of `bench.export --format safetensors`).

safetensors holds tensors and a string-to-string metadata table, nothing that can run code when it is opened, so it
is the file to send a teammate or to download: `bench.predict --model FILE.safetensors` predicts with it exactly as
with the run folder (the same CSV), and `--pretrained FILE.safetensors` (bench.run, bench.distill) starts a backbone
from it. The metadata holds what both need, as JSON values:
- the prediction plan (predict.Plan.metadata, the same table an ONNX export carries): attributes, class names, input
  size and resize policy, TTA views, the decision rule with its fitted tau and the training class counts, and the
  identity of the checkpoint it was made from;
- `network`: what rebuilds the network: the zoo model name, its timm name, the number of classes per attribute, the
  head's dropout and hidden width, and the input normalisation (mean, std).
One network per file: a k-fold member (K networks) or an ensemble entry exports to ONNX instead.
"""
from __future__ import annotations

import json
from pathlib import Path

from bench import checkpoints
from bench.artifacts import RunArtifacts, atomic_path, digest
from bench.inference.predict import Plan, PredictError, check_weights

KEY = "fashion_bench_weights"
FORMAT = "1"


def network_meta(meta: dict) -> dict:
    """The part of a run.json that rebuilds its network (tta.load_trained reads exactly these fields)."""
    cfg, recipe = meta["config"], meta["config"]["recipe"]
    return {"config": {"model": cfg["model"], "timm_name": cfg.get("timm_name"), "size": cfg["size"],
                       "recipe": {"dropout": recipe["dropout"], "hidden": recipe["hidden"],
                                  "resize": recipe["resize"]}},
            "num_classes": list(meta["num_classes"]), "input": meta.get("input"), "name": meta.get("name"),
            "attributes": list(meta.get("attributes") or []), "class_names": meta.get("class_names")}


def export_safetensors(plan: Plan, out: Path) -> dict:
    """Write `plan`'s one network (a `--model` plan) with the plan and the network's description as metadata to
    `out`, atomically; returns {"path", "bytes", "tensors"}."""
    from safetensors.torch import save_file
    if len(plan.members) != 1:
        raise PredictError(f"{plan.source}: a .safetensors file holds one network; an ensemble exports to ONNX "
                           f"(--format onnx)")
    member = plan.members[0]
    ckpts = check_weights(member)
    if len(ckpts) != 1:
        raise PredictError(f"{plan.source} is a k-fold member of {len(ckpts)} networks; a .safetensors file holds one: "
                           f"export it to ONNX (--format onnx), which carries all of them")
    state = checkpoints.load(ckpts[0])["model"]
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = {KEY: FORMAT, **plan.metadata(), "network": json.dumps(network_meta(member.meta)),
                "checkpoint_sha256": json.dumps(digest(ckpts[0])["sha256"])}
    out = Path(out)
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return {"path": out, "bytes": out.stat().st_size, "tensors": len(tensors)}


def is_weights_file(spec: str | Path) -> bool:
    return str(spec).endswith(".safetensors")


def read_weights_file(path: str | Path) -> tuple[Plan, RunArtifacts]:
    """(the plan stored in an exported .safetensors file, a member standing for its network); PredictError naming the
    file when it is missing, unreadable or not a bench.export weights file. Nothing in the file is executed."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise PredictError(f"{path}: no such weights file (bench.export --format safetensors writes one)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # not a safetensors file, truncated header
        raise PredictError(f"{path}: not a readable .safetensors file ({type(e).__name__}: {e})") from e
    if meta.get(KEY) != FORMAT:
        raise PredictError(f"{path}: not a weights file exported by bench.export (metadata {KEY} is "
                           f"{meta.get(KEY)!r}, this version reads {FORMAT!r}); to start a backbone from it use "
                           f"--pretrained {path}")
    plan = Plan.from_metadata({k: v for k, v in meta.items() if k != KEY}, str(path))
    try:
        network = json.loads(meta["network"])
        network["config"]["model"], network["num_classes"]  # noqa: B018 (the fields load_trained needs)
    except (KeyError, ValueError, TypeError) as e:
        raise PredictError(f"{path}: incomplete bench.export metadata (network: {e}); export it again") from e
    real = path.resolve()  # the file the user named (a link to it too): its own folder holds it
    member = RunArtifacts(real.parent, {**network, "status": "done", "weights_file": real.name})
    plan.members = [member]
    plan.source = f"weights {path.name}"
    return plan, member


def plan_weights(path: str | Path, metric: str | None = None, views: list[str] | None = None) -> Plan:
    """The plan of an exported weights file for bench.predict; PredictError when `metric` or `views` ask for another
    decision rule or other views than the ones it was exported with (export it again with those)."""
    plan, _ = read_weights_file(path)
    if metric and metric != plan.metric:
        raise PredictError(f"--metric {metric}: {path} was exported with the decision rule for {plan.metric}; export "
                           f"it again: python -m bench.export --model RUN/MODEL --format safetensors --metric {metric}")
    if views and list(views) != list(plan.views):
        raise PredictError(f"--tta {','.join(views)}: {path} was exported with views {','.join(plan.views)}; export "
                           f"it again with --tta {','.join(views)}")
    return plan
