"""Export a finished run or an ensemble entry as one ONNX graph, with what predicting needs in its metadata.

    python -m bench.export --model default/resnet18 --format onnx [--out resnet18.onnx] [--metric class]
    python -m bench.export --ensemble ensemble --format onnx

The graph (opset 18, dynamic batch) takes `images`, uint8 RGB NHWC (batch, size, size, 3) resized by the model's
resize policy, normalises them inside, runs every TTA view (and an entry's members, weights and combiner) and
returns each attribute's probabilities (`probs_0`, `probs_1`, ...). The decision rule (its tau and the training class
counts), attribute and class names, size and resize policy are in the model's metadata_props; `python -m
bench.predict SOURCE --onnx FILE` uses them. Prints the file size and the CPU latency per image of onnxruntime and
eager PyTorch on the same batch (one timed run each). An existing file at --out is refused before any work unless
--force; a missing folder is made only inside the working folder. Needs the onnx extra: pip install -e '.[onnx]'. The
library is bench/inference/onnx_export.py; this module parses arguments.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from bench import workdir
from bench.ensembling.views import VIEWS
from bench.metrics import TARGET_HELP, TARGETS


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", metavar="RUN/MODEL", help="a finished run of the runs folder, e.g. default/resnet18")
    which.add_argument("--ensemble", metavar="NAME", help="an ensemble entry, RUNS/_ensembles/NAME")
    p.add_argument("--format", required=True, choices=["onnx", "safetensors"],
                   help="onnx: one graph of a run or an entry for onnxruntime; safetensors: a run's weights with what "
                        "predicting needs in its metadata, the file to share (it cannot hold code; bench.predict "
                        "--model FILE and --pretrained FILE take it)")
    p.add_argument("--out", metavar="FILE", help="the graph (default WORKDIR/export/<model or ensemble>.onnx). An "
                   "existing file is refused (--force replaces it, atomically); a missing folder is made inside the "
                   "working folder only (elsewhere it must exist)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--metric", choices=list(TARGETS),
                   help=TARGET_HELP + ". --model: the decision rule stored (overall: argmax; class: logit "
                        "adjustment, tau fitted on the run's val probabilities); --ensemble: the entry's own")
    p.add_argument("--tta", help="--model only: views in the graph, comma-separated (default plain,flip). "
                   "Transforms: " + VIEWS.describe())
    p.add_argument("--latency-batch", type=int, default=8, help="images in the timed batch (default 8)")
    p.add_argument("--runs-dir", help="runs folder (default WORKDIR/runs)")
    workdir.add_argument(p)
    a = p.parse_args(argv)
    if a.tta and not a.model:
        p.error("--tta is for --model; an ensemble uses its entry's views")
    if a.latency_batch < 1:
        p.error(f"--latency-batch {a.latency_batch}: must be at least 1 image")
    return a


def check_output(out: Path, force: bool, home: Path) -> list[Path]:
    """What --out refuses (onnx_export.check_out: a folder, an existing file without --force), and which missing
    folders it needs: made only inside the working folder `home` (returned, to make after the checks), else
    refused. ValueError names the problem."""
    from bench.inference.onnx_export import check_out
    missing = [f for f in [out.parent, *out.parent.parents] if not f.exists()]
    if missing and not out.parent.resolve().is_relative_to(home.resolve()):
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist; create it first (mkdir -p "
                         f"{shlex.quote(str(out.parent))}) or give a path in the working folder {home.resolve()}")
    if not missing:
        check_out(out, force)
    return missing


def main(argv=None) -> dict:
    a = parse_args(argv)
    from bench.artifacts import ArtifactError
    from bench.inference.predict import PredictError, plan_ensemble, plan_model
    wd = workdir.resolve(a.workdir)
    runs_dir = Path(a.runs_dir) if a.runs_dir else wd.runs
    name = a.model.replace("/", "-") if a.model else a.ensemble
    out = Path(a.out) if a.out else wd.root / "export" / f"{name}.{a.format}"
    try:
        if a.format == "onnx":
            import onnx  # noqa: F401  (the extra: checked before any work)
            import onnxruntime  # noqa: F401
        from bench.inference.onnx_export import export_onnx
    except ImportError as e:
        print(f"error: bench.export needs onnx, onnxscript and onnxruntime: pip install -e '.[onnx]' ({e})",
              file=sys.stderr)
        raise SystemExit(2)
    try:
        missing = check_output(out, a.force, wd.root)  # before any work: a refusal at the end would waste it
        if a.model:
            views = [v.strip() for v in a.tta.split(",") if v.strip()] if a.tta else None
            plan = plan_model(runs_dir, a.model, a.metric, views)
        else:
            plan = plan_ensemble(runs_dir, a.ensemble, a.metric)
        if missing:
            out.parent.mkdir(parents=True, exist_ok=True)
            print(f"made the folder {out.parent}")
        if a.format == "safetensors":
            from bench.inference.weights_file import export_safetensors
            r = export_safetensors(plan, out)
        else:
            r = export_onnx(plan, out, a.latency_batch, force=a.force)
    except (PredictError, ArtifactError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    size, policy = plan.inputs[0]
    if a.format == "safetensors":
        print(f"wrote {r['path']} ({r['bytes'] / 2**20:.1f} MiB, {r['tensors']} tensors): {plan.source}, {size} px "
              f"{policy}; views {'+'.join(plan.views)}; decision {plan.decision}; safe to share and to open "
              f"(python -m bench.predict SOURCE --model {r['path']})")
        return r
    print(f"wrote {r['path']} ({r['bytes'] / 2**20:.1f} MiB): {plan.source}, images uint8 RGB NHWC (batch, {size}, "
          f"{size}, 3) resized by {policy}; views {'+'.join(plan.views)}; decision {plan.decision} in metadata")
    print(f"CPU latency per image, batch of {r['batch']}, one timed run each ({r['threads']} torch threads): "
          f"onnxruntime {r['ort_ms']:.2f} ms, eager PyTorch {r['torch_ms']:.2f} ms, ratio "
          f"{r['ort_ms'] / max(r['torch_ms'], 1e-9):.2f}x; largest difference {r['max_abs_diff']:.1e}")
    return r


if __name__ == "__main__":
    main()
