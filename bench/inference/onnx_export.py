"""One ONNX graph of a run or an ensemble entry (library of bench.export).

The graph takes `images`: uint8 RGB, NHWC (batch, size, size, 3), what PIL, OpenCV (after BGR->RGB) and numpy give,
decoded and resized by the model's resize policy (metadata `size`, `resize`); the batch is dynamic. Inside: the
conversion to float pixels and each network's own normalisation (zoo/multihead.py), every TTA view of the plan
(bench/ensembling/views.py), the mean over views and over a k-fold member's fold models, then the members combined
per attribute with the entry's weights (`mean` or `geometric`, the combiners of bench/ensembling/combiners.py).
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
from bench.ensembling.combiners import TORCH_COMBINERS
from bench.ensembling.views import view_images
from bench.inference.predict import Plan, PredictError, check_weights

OPSET = 18
GRAPH_COMBINERS = tuple(TORCH_COMBINERS)  # the combiners with a torch form (bench/ensembling/combiners.py)


class PlanGraph(nn.Module):
    """The plan as one torch module: uint8 NHWC images -> one probability tensor per attribute."""

    def __init__(self, plan: Plan, networks: list[list[nn.Module]]):
        super().__init__()
        if len(networks) > 1 and plan.combine not in GRAPH_COMBINERS:
            raise PredictError(f"combiner {plan.combine} has no graph form (export knows {', '.join(GRAPH_COMBINERS)}"
                               f"; add it to bench/inference/onnx_export.py)")
        self.members = nn.ModuleList(nn.ModuleList(nets) for nets in networks)
        self.views, self.combine, self.num_classes = list(plan.views), plan.combine, list(plan.num_classes)
        w = np.asarray(plan.weights, float)
        if w.ndim == 1:
            w = np.repeat(w[:, None], len(self.num_classes), 1)
        w = w / np.maximum(w.sum(0, keepdims=True), 1e-12)  # each attribute's weights sum to 1, as combine() does
        self.register_buffer("weights", torch.tensor(w, dtype=torch.float32), persistent=False)

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
        parts = [torch.split(p, self.num_classes, 1) for p in members]
        out = []
        for a in range(len(self.num_classes)):
            stack = torch.stack([p[a] for p in parts])  # (M, batch, k)
            w = self.weights[:, a].view(-1, 1, 1)
            if len(parts) == 1:
                out.append(stack[0])
            else:
                out.append(TORCH_COMBINERS[self.combine](stack, w))
        return tuple(out)


def build_graph(plan: Plan) -> PlanGraph:
    from bench.ensembling.tta import load_trained
    if len(set(plan.inputs)) > 1:
        inputs = ", ".join(f"{lab} {s}px {p}" for lab, (s, p) in zip(plan.labels, plan.inputs))
        raise PredictError(f"{plan.source}: members take different inputs ({inputs}); one graph takes one input "
                           f"size and resize policy: export each member")
    nets = [[load_trained(m.meta, c) for c in check_weights(m)] for m in plan.members]
    return PlanGraph(plan, nets).eval()


def export_onnx(plan: Plan, out: Path, latency_batch: int = 8, seed: int = 0) -> dict:
    """Write the plan's graph to `out` (atomically), check it loads, and time it: returns {"path", "bytes",
    "ort_ms", "torch_ms" (per image, one timed run of `latency_batch` images after one warm-up run each),
    "max_abs_diff" (onnxruntime vs eager PyTorch on those images)}."""
    import onnx
    import onnxruntime as ort
    graph = build_graph(plan)
    size = plan.inputs[0][0]
    gen = torch.Generator().manual_seed(seed)
    example = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8, generator=gen)
    names = [f"probs_{i}" for i in range(len(plan.num_classes))]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
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
    x = torch.randint(0, 256, (latency_batch, size, size, 3), dtype=torch.uint8, generator=gen)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feed = {"images": x.numpy()}
    session.run(None, feed)
    t0 = time.perf_counter()
    got = session.run(None, feed)
    ort_s = time.perf_counter() - t0
    with torch.inference_mode():
        graph(x)
        t0 = time.perf_counter()
        want = graph(x)
        torch_s = time.perf_counter() - t0
    diff = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))
    return {"path": out, "bytes": out.stat().st_size, "ort_ms": 1e3 * ort_s / latency_batch,
            "torch_ms": 1e3 * torch_s / latency_batch, "batch": latency_batch, "max_abs_diff": diff,
            "threads": torch.get_num_threads()}
