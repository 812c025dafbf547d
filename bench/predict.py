"""Predict any images with a finished run or an ensemble entry: one CSV row per image.

    python -m bench.predict photos/ --model default/resnet18 [--metric class] [--out predictions.csv] [--probs]
    python -m bench.predict list.txt --ensemble ensemble [--onnx ensemble.onnx]
    python -m bench.predict photo.jpg --onnx model.onnx

SOURCE is an image, a folder (searched recursively; hidden files skipped) or a list file (.txt, .lst, .list: one path
per line, relative to the list file's folder). Each image is prepared exactly as the model was evaluated (its size,
resize policy and normalisation, from run.json), run through the member's or the entry's TTA views, combined with
the entry's weights and combiner, and decided by its fitted rule (tau). The CSV has the image path (column image)
and, per attribute, the class name and its probability (columns ATTRIBUTE, ATTRIBUTE_prob; --probs: every class's
probability, columns ATTRIBUTE=CLASS); it is written atomically, replacing FILE. Files that cannot be decoded (not an image, truncated, missing) are listed with the
reason and skipped; the others' rows are written, and the exit code is 1. A run or entry that cannot be used (no
weights, members retrained since the entry, a graph made from another model) stops with exit code 2 and writes
nothing. The library is bench/inference/; this module parses arguments.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench import workdir
from bench.ensembling.views import VIEWS
from bench.training.arguments import add_precision_argument
from bench.metrics import TARGET_HELP, TARGETS


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("source", metavar="SOURCE", help="an image, a folder (recursive) or a list file (.txt/.lst/.list, "
                   "one path per line, relative to its folder)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="RUN/MODEL", help="a finished run of the runs folder, e.g. default/resnet18 "
                       "(a distilled student too), or a FILE.safetensors written by bench.export --format "
                       "safetensors (safe to open whoever made it)")
    which.add_argument("--ensemble", metavar="NAME", help="an ensemble entry, RUNS/_ensembles/NAME (bench.ensemble "
                       "--name)")
    p.add_argument("--metric", choices=list(TARGETS),
                   help=TARGET_HELP + ". --model: the decision rule (overall: argmax; class: logit adjustment, tau "
                        "fitted per attribute on the run's val probabilities); default overall. --ensemble: the "
                        "entry's own (a different one is refused)")
    p.add_argument("--tta", help="--model only: views averaged, comma-separated (default plain,flip). Transforms: "
                   + VIEWS.describe() + ". An ensemble uses its entry's views")
    p.add_argument("--out", metavar="FILE.csv", help="the CSV (default WORKDIR/predictions.csv); replaced atomically")
    p.add_argument("--probs", action="store_true", help="add every class's probability (columns ATTRIBUTE=CLASS)")
    p.add_argument("--onnx", metavar="FILE", help="run this graph (bench.export) in onnxruntime instead of PyTorch; "
                   "with --model/--ensemble it must have been exported from them (checked), alone its metadata "
                   "says everything")
    from bench.inference.engines import ENGINES, ONNX_MIN_IMAGES  # no torch: --help stays fast
    p.add_argument("--engine", default="auto", choices=ENGINES,
                   help="--model/--ensemble: torch runs the networks in PyTorch; onnx exports the plan's graph once "
                        "(bench.export's, cached beside the run or entry in predict-onnx/, keyed to the weights' "
                        "sha256 and the plan) and runs it in onnxruntime (the same CSV within 1e-4); auto (default): "
                        "onnx on a CPU in fp32 with the onnx extra installed when that graph is cached or there are "
                        f"{ONNX_MIN_IMAGES} images or more (the export, ~10 s, then pays for itself), else torch. The "
                        "printed line says which ran and why")
    add_precision_argument(p)
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--device", default="auto", help="PyTorch path: auto | cpu | cuda | cuda:N")
    p.add_argument("--data", help="--model --metric class with --tta views other than plain/flip: the dataset root, "
                   "if it moved since training (to compute those views on val)")
    p.add_argument("--runs-dir", help="runs folder (default WORKDIR/runs)")
    workdir.add_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if not (a.model or a.ensemble or a.onnx):
        p.error("give --model RUN/MODEL, --ensemble NAME or --onnx FILE")
    if a.tta and not a.model:
        p.error("--tta is for --model; an ensemble uses its entry's views, a graph its own")
    if a.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if a.onnx and a.engine == "torch":
        p.error("--onnx FILE runs in onnxruntime; drop --engine torch")
    return a


def check_output(out: Path) -> None:
    """--out must name a file (replaced atomically) whose folder exists or can be made: ValueError otherwise."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name the CSV file, e.g. {out / 'predictions.csv'}")
    folder = next((f for f in [out.parent, *out.parent.parents] if f.exists()), None)
    if folder is not None and not folder.is_dir():
        raise ValueError(f"--out {out}: {folder} is a file, not a folder")


def main(argv=None) -> int:
    a = parse_args(argv)
    from bench.artifacts import ArtifactError
    from bench.data import DatasetError
    from bench.inference.engines import cached_graph, choose_engine
    from bench.inference.predict import (OnnxScorer, PredictError, TorchScorer, csv_header, plan_ensemble,
                                         plan_model, predict_files, write_csv)
    from bench.inference.sources import SourceError, list_sources
    from bench.inference.weights_file import is_weights_file, plan_weights
    wd = workdir.resolve(a.workdir)
    runs_dir = Path(a.runs_dir) if a.runs_dir else wd.runs
    out = Path(a.out) if a.out else wd.root / "predictions.csv"
    try:
        check_output(out)  # before any image is read: a refusal after predicting them all would waste the work
        files = list_sources(a.source)
        from bench.training.precision import setup
        from bench.training.trainer import pick_device
        device = pick_device(a.device)
        setup(a.precision, device)  # the precision and CPU threads of the PyTorch path
        plan = None
        if a.model:
            views = [v.strip() for v in a.tta.split(",") if v.strip()] if a.tta else None
            if is_weights_file(a.model):  # a file from bench.export --format safetensors: its own plan
                plan = plan_weights(Path(a.model), a.metric, views)
            else:
                plan = plan_model(runs_dir, a.model, a.metric, views, Path(a.data) if a.data else None, device)
        elif a.ensemble:
            plan = plan_ensemble(runs_dir, a.ensemble, a.metric)
        if a.onnx:
            scorer = OnnxScorer(Path(a.onnx), plan)
            plan, engine = scorer.plan, f"onnxruntime ({a.onnx})"
        else:
            which, why = choose_engine(a.engine, plan, device, len(files))  # torch or onnx, and why
            if which == "onnx":
                try:
                    path, seconds = cached_graph(plan)
                except Exception as e:  # an exporter failure: auto goes on in PyTorch, --engine onnx stops
                    if a.engine == "onnx":
                        raise PredictError(f"--engine onnx: exporting {plan.source} failed ({type(e).__name__}: "
                                           f"{e})") from e
                    which, why = "torch", f"auto: PyTorch (exporting the graph failed: {type(e).__name__}: {e})"
            if which == "onnx":
                scorer = OnnxScorer(path, plan)
                done = f"exported now in {seconds:.1f} s" if seconds is not None else "cached"
                plan, engine = scorer.plan, f"onnxruntime, graph {path} ({done}); {why}"
            else:
                scorer = TorchScorer(plan, device, a.batch_size)
                engine = f"{scorer.describe()}; {why}"
        csv_header(plan, a.probs)  # refuses clashing column names before any image is read
    except (PredictError, SourceError, ArtifactError, DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    print(f"[predict] {len(files)} file(s) from {a.source} with {plan.source} ({engine}); views "
          f"{'+'.join(plan.views)}, decision {plan.decision}"
          + (f" (tau {' '.join(f'{at} {t:g}' for at, t in zip(plan.attributes, plan.params['tau']))})"
             if plan.params.get("tau") else ""))
    t0 = time.perf_counter()
    result = predict_files(files, plan, scorer, a.batch_size, progress=not a.no_progress)
    seconds = time.perf_counter() - t0
    for path, why in result.failed:
        print(f"skipped {path}: {why}", file=sys.stderr)
    if not result.paths:
        print(f"error: none of the {len(files)} file(s) could be read as an image; nothing written", file=sys.stderr)
        raise SystemExit(2)
    write_csv(result, plan, out, a.probs)
    print(f"wrote {out}: {len(result.paths)} image(s) in {seconds:.1f} s ({len(result.paths) / max(seconds, 1e-9):.1f} "
          f"img/s, decoding included); {len(result.failed)} skipped")
    if result.failed:
        raise SystemExit(1)
    return 0


if __name__ == "__main__":
    main()
