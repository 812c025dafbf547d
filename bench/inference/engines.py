"""Which engine runs a plan in bench.predict: PyTorch (predict.TorchScorer), or the plan's exported graph in
onnxruntime (predict.OnnxScorer), exported once by onnx_export.py and cached beside the run (library of
`bench.predict --engine`). Above both predict.py and onnx_export.py, so neither imports the other's user.
"""
from __future__ import annotations

import json
from pathlib import Path

from bench.inference.predict import Plan, PredictError, check_weights

# --- engines: PyTorch, or the plan's exported graph in onnxruntime (exported once, cached beside the run) ----------
ENGINES = ("auto", "torch", "onnx")
GRAPH_DIR = "predict-onnx"  # in the run (or entry) folder: bench.predict's cached graphs, one per weights and plan
# the code that shapes the exported graph: a change to any of these makes the cached graphs stale (a new key)
GRAPH_SOURCES = ("bench/inference/onnx_export.py", "bench/ensembling/views.py", "bench/ensembling/combiners.py",
                 "zoo/multihead.py", "zoo/fastpaths.py")
# `--engine auto` on a CPU in fp32 runs the graph in onnxruntime (when the onnx extra is installed) once it is cached,
# or when there are at least ONNX_MIN_IMAGES images: exporting costs once what onnxruntime saves per image. Measured
# (issue #42, 2 contended CPU cores, tf_efficientnet_lite0 @128, plain + flip, batch 64): export 9.5-12 s;
# onnxruntime 87 img/s vs PyTorch 29 (BatchNorm folded, channels_last; eager 20): 23 ms saved per image, so the export
# pays for itself after ~450 images (reports/reference/predict.md, idle: 147 vs 42 img/s, ~24 ms saved per image).
ONNX_MIN_IMAGES = 500


def onnx_missing() -> str | None:
    """Why the onnx engine cannot run here (None when it can)."""
    import importlib.util
    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    return f"the onnx extra is not installed ({', '.join(missing)}: pip install -e '.[onnx]')" if missing else None


def choose_engine(requested: str, plan: Plan, device, images: int, precision: str | None = None) -> tuple[str, str]:
    """("torch" | "onnx", why) for `bench.predict --engine requested` on `images` images; PredictError when `onnx` is
    asked for and cannot run. `auto`: onnx on a CPU in fp32 when the graph is cached or there are ONNX_MIN_IMAGES
    images or more; the ONNX graph is fp32 and takes one input size, so bf16, members of different sizes and CUDA
    run in PyTorch."""
    from bench.training.precision import decide
    if requested not in ENGINES:
        raise PredictError(f"--engine {requested}: one of {', '.join(ENGINES)}")
    numerics = decide(device, precision)
    blockers = []
    if onnx_missing():
        blockers.append(onnx_missing())
    if len(set(plan.inputs)) > 1:
        blockers.append("its members take different input sizes (one graph takes one)")
    if requested == "onnx":
        if blockers:
            raise PredictError(f"--engine onnx: {plan.source} cannot run in onnxruntime: {'; '.join(blockers)}")
        return "onnx", "--engine onnx (given)"
    if requested == "torch":
        return "torch", "--engine torch (given)"
    kind = getattr(device, "type", str(device))
    if kind != "cpu":
        return "torch", f"auto: PyTorch on {kind}"
    if numerics.precision != "fp32":
        return "torch", f"auto: {numerics.precision} runs in PyTorch (the ONNX graph is fp32)"
    if blockers:
        return "torch", f"auto: PyTorch ({'; '.join(blockers)})"
    if find_graph(plan) is not None:
        return "onnx", "auto: onnxruntime on the CPU (fp32; the graph is cached)"
    if images >= ONNX_MIN_IMAGES:
        return "onnx", (f"auto: onnxruntime on the CPU (fp32; {images} images >= {ONNX_MIN_IMAGES}, where exporting "
                        f"the graph once pays for itself)")
    return "torch", (f"auto: PyTorch ({images} images < {ONNX_MIN_IMAGES}: exporting the graph for onnxruntime would "
                     f"cost more than it saves; --engine onnx exports it anyway)")


def graph_key(plan: Plan) -> str:
    """Identity of the plan's graph: the plan (its metadata: members and their identities, views, weights,
    combiner, decision rule), the sha256 of every checkpoint it runs (bench/artifacts.py `digest`), the torch and
    graph-format versions and the code that shapes the graph (GRAPH_SOURCES)."""
    import hashlib

    import torch

    from bench.artifacts import digest
    from bench.inference import onnx_export
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256(json.dumps({"plan": plan.metadata(), "torch": torch.__version__, "opset": onnx_export.OPSET},
                                  sort_keys=True).encode())
    for rel in GRAPH_SOURCES:
        source = root / rel
        h.update(source.read_bytes() if source.exists() else rel.encode())
    for m in plan.members:
        for c in check_weights(m):
            h.update(digest(c)["sha256"].encode())
    return h.hexdigest()


def graph_homes(plan: Plan) -> list[Path]:
    """Where the plan's cached graph is kept: the run's or entry's folder GRAPH_DIR, else the cache."""
    from bench.data.dataset import cache_home
    return [*([Path(plan.home) / GRAPH_DIR] if plan.home is not None else []), cache_home() / "onnx"]


def find_graph(plan: Plan) -> Path | None:
    """The plan's cached graph, if one was exported (None when not, or when the onnx extra is missing)."""
    if onnx_missing():
        return None
    name = f"{graph_key(plan)[:32]}.onnx"
    return next((folder / name for folder in graph_homes(plan) if (folder / name).is_file()), None)


def cached_graph(plan: Plan) -> tuple[Path, float | None]:
    """(the plan's ONNX graph, seconds spent exporting it now or None when it was already there): exported once with
    onnx_export (the graph bench.export writes) into the run's or entry's folder, GRAPH_DIR/<key>.onnx (graph_key:
    new weights or another plan get a new file); where that folder cannot be written, into the cache
    ($FASHION_BENCH_CACHE/onnx)."""
    import time

    import torch

    from bench.inference.onnx_export import build_graph, save_graph
    found = find_graph(plan)
    if found is not None:
        return found, None
    name, homes = f"{graph_key(plan)[:32]}.onnx", graph_homes(plan)
    t0 = time.perf_counter()
    graph = build_graph(plan)
    size = plan.inputs[0][0]
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    for i, folder in enumerate(homes):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            save_graph(graph, plan, folder / name, example)
            return folder / name, time.perf_counter() - t0
        except OSError:  # a read-only run folder: the cache
            if i == len(homes) - 1:
                raise
    raise AssertionError("unreachable")
