"""One ONNX graph of a run or an ensemble entry (library of bench.export).

The graph takes `images`: uint8 RGB, NHWC (batch, size, size, 3), what PIL, OpenCV (after BGR->RGB) and numpy give,
decoded and resized by the model's resize policy (metadata `size`, `resize`); the batch is dynamic. Inside: the
conversion to float pixels and each network's own normalisation (zoo/multihead.py), every TTA view of the plan
(bench/ensembling/views.py), the mean over views and over a k-fold member's fold models, then the members combined
per attribute with the entry's weights and combiner (bench/ensembling/combiners.py `combine`, traced: the function
bench.ensemble and bench.predict combine with).
Outputs `probs_0` .. `probs_{A-1}`: each attribute's (batch, classes) probabilities. The decision rule stays
outside (it is an argmax of adjusted log-probabilities): its name, tau, the training class counts (its prior),
attribute and class names, size, resize policy, views, members with their weight identities and weights are in the
model's metadata_props (JSON values; predict.Plan.metadata), which `bench.predict --onnx` reads and checks.

Exporter: torch.onnx.export with dynamo=True (torch.export + onnxscript), opset 18. It is torch's default since 2.9
and the maintained path; the TorchScript exporter (dynamo=False) also gave identical outputs here, 2-5x faster to
export, but it warns that it is deprecated. Both gave outputs within 3e-8 of eager PyTorch on ResNet-18 and
EfficientNet-B3 (torch 2.14.1, onnxruntime 1.32).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.artifacts import atomic_path
from bench.ensembling.combiners import combine
from bench.ensembling.views import view_images
from bench.inference.predict import Plan, PredictError, check_weights

OPSET = 18


class PlanGraph(nn.Module):
    """The plan as one torch module: uint8 NHWC images -> one probability tensor per attribute."""

    def __init__(self, plan: Plan, networks: list[list[nn.Module]]):
        super().__init__()
        self.members = nn.ModuleList(nn.ModuleList(nets) for nets in networks)
        self.views, self.combine, self.num_classes = list(plan.views), plan.combine, list(plan.num_classes)
        self.register_buffer("weights", torch.tensor(np.asarray(plan.weights, float), dtype=torch.float32),
                             persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = images.permute(0, 3, 1, 2)
        members = []
        n = x.shape[0]
        for nets in self.members:
            # every view in one batch (eval mode: each image's output does not depend on its batch), so each
            # network appears once in the graph; then the mean over views and over the member's networks
            xv = torch.cat([view_images(x, name) for name in self.views])
            per_net = [torch.cat([z.float().softmax(-1) for z in net(xv)], 1) for net in nets]
            probs = torch.stack(per_net).mean(0)
            members.append(probs.reshape(len(self.views), n, probs.shape[1]).mean(0))
        return tuple(torch.split(combine(members, self.weights, self.num_classes, self.combine), self.num_classes, 1))


def build_graph(plan: Plan) -> PlanGraph:
    from bench.ensembling.tta import load_trained
    if len(set(plan.inputs)) > 1:
        inputs = ", ".join(f"{lab} {s}px {p}" for lab, (s, p) in zip(plan.labels, plan.inputs))
        raise PredictError(f"{plan.source}: members take different inputs ({inputs}); one graph takes one input "
                           f"size and resize policy: export each member")
    nets = [[load_trained(m.meta, c) for c in check_weights(m)] for m in plan.members]
    return PlanGraph(plan, nets).eval()


clock = time.perf_counter  # the latency timer (tests put a scripted one here)


def check_out(out: Path, force: bool = False) -> None:
    """Refuse, before any work, an `out` that is a folder, or an existing file without `force` (it may be another
    model's graph), or one in a folder that does not exist (ValueError naming it)."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name the graph's file, e.g. {out / 'model.onnx'}")
    if out.exists() and not force:
        raise ValueError(f"{out} exists; pass --force to overwrite it or choose another --out")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: {out.parent} " + ("is not a folder" if out.parent.exists() else
                                                          "does not exist"))


def save_graph(graph: PlanGraph, plan: Plan, path: Path, example: torch.Tensor) -> None:
    """The graph traced on `example` (uint8 NHWC; the batch is dynamic), with the plan's metadata_props, checked,
    written to `path` atomically."""
    import onnx
    names = [f"probs_{i}" for i in range(len(plan.num_classes))]
    size = plan.inputs[0][0]
    with atomic_path(path) as tmp:
        torch.onnx.export(graph, (example,), str(tmp), input_names=["images"], output_names=names,
                          opset_version=OPSET, dynamo=True, dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                          external_data=False, verbose=False)
        model = onnx.load(str(tmp))
        onnx.helper.set_model_props(model, plan.metadata())
        model.doc_string = (f"fashion-bench {plan.source}: images uint8 RGB NHWC (batch, {size}, {size}, 3), "
                            f"resized by policy {plan.inputs[0][1]}; outputs probs_i per attribute "
                            f"{', '.join(plan.attributes)}; decision rule {plan.decision} in metadata_props")
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))


def timed(run, batch: int):
    """(result, milliseconds per image): `run()` once to warm up, then once timed by `clock`."""
    run()
    t0 = clock()
    result = run()
    return result, 1e3 * (clock() - t0) / batch


def export_onnx(plan: Plan, out: Path, latency_batch: int = 8, seed: int = 0, force: bool = False) -> dict:
    """Write the plan's graph to `out` (atomically), check it loads, and time it: returns {"path", "bytes",
    "ort_ms", "torch_ms" (per image, one timed run of `latency_batch` images after one warm-up run each),
    "max_abs_diff" (onnxruntime vs eager PyTorch on those images)}. Refuses (ValueError, before any work) a
    latency batch below 1 and what check_out refuses."""
    import onnxruntime as ort
    if latency_batch < 1:
        raise ValueError(f"--latency-batch {latency_batch}: must be at least 1 image")
    out = Path(out)
    check_out(out, force)
    graph = build_graph(plan)
    size = plan.inputs[0][0]
    gen = torch.Generator().manual_seed(seed)
    save_graph(graph, plan, out, torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8, generator=gen))
    x = torch.randint(0, 256, (latency_batch, size, size, 3), dtype=torch.uint8, generator=gen)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feed = {"images": x.numpy()}
    got, ort_ms = timed(lambda: session.run(None, feed), latency_batch)
    with torch.inference_mode():
        want, torch_ms = timed(lambda: graph(x), latency_batch)
    diff = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))
    return {"path": out, "bytes": out.stat().st_size, "ort_ms": ort_ms, "torch_ms": torch_ms,
            "batch": latency_batch, "max_abs_diff": diff, "threads": torch.get_num_threads()}
