"""Combine finished runs into one prediction file, with an honest estimate of the gain.

    python -m bench.ensemble [--runs default] [--models resnet18,effb3] [--weights caruana] [--combine mean]
                             [--tta plain,flip] [--out submission] [--force]

Members are the finished runs of the runs folder. Each member's probabilities are averaged over TTA views (plain and
flip are stored by training; others, e.g. crop0.9 or crop0.9+flip, are computed from the member's best.pt once and
cached beside it). Members are combined per attribute (--combine) with weights (--weights) fitted on val, and
turned into predictions by a decision rule (--decision) fitted on val for the target metric (--metric): argmax, or
post-hoc logit adjustment, argmax_y p(y|x) / pi_y^tau with pi the training class frequencies and tau per attribute
(the default for --metric class). Whatever is fitted is also scored by k-fold cross-validation over val images
(folds stratified over all attributes; weights and rule refitted on each k-1 folds), for each member alone and for
the ensemble, and the leaderboard entry holds those out-of-fold val predictions. Only weights and rule are
cross-fitted: the members' epochs (and any tuned parameters) may have been chosen on the same val images. Without
CV (nothing fitted, or fewer than 2 x folds val images) the entry is in-sample; run.json's `val_scoring` says which,
and the leaderboard shows it. Refuses an existing prediction file before doing any work (--force overwrites); writes
OUT/prediction.txt (test.txt order, validated) and OUT/prediction.zip atomically, and an entry
RUNS/_ensembles/NAME/ for the leaderboard. The library is bench/ensembling/; this module parses arguments.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import workdir
from bench.ensembling.combiners import COMBINERS
from bench.ensembling.decisions import DECISIONS
from bench.ensembling.views import VIEWS
from bench.ensembling.weightings import WEIGHTINGS
from bench.metrics import TARGET_HELP, TARGETS
from bench.tracking import add_tracking_arguments, tracker_from_args


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.ensemble", description=__doc__.split("\n\n")[0])
    workdir.add_argument(p)
    p.add_argument("--runs-dir", help="runs folder (default WORKDIR/runs)")
    p.add_argument("--runs", help="comma-separated run names (or run/model labels; a replica set's run/model: all "
                                  "its seeds); default all")
    p.add_argument("--models", help="comma-separated model names, each with all its replicas (bench.run --seeds: "
                                    "a deep ensemble of its seeds; printed); default all")
    p.add_argument("--tta", default="plain,flip",
                   help="views averaged per member, comma-separated; a view is transforms joined by +, e.g. "
                        "plain,flip,crop0.9+flip. Transforms (bench/ensembling/views.py): " + VIEWS.describe())
    p.add_argument("--combine", default="mean", choices=COMBINERS.names(), help=COMBINERS.describe())
    p.add_argument("--weights", default="caruana", choices=WEIGHTINGS.names(), help=WEIGHTINGS.describe())
    p.add_argument("--metric", choices=list(TARGETS),
                   help=TARGET_HELP + "; what weights, ensemble selection and the decision rule are fitted for "
                        "(both metrics are always printed), and the leaderboard's target (default: overall for the "
                        "fit; the leaderboard keeps the metric a command last named)")
    p.add_argument("--decision", choices=DECISIONS.names(),
                   help="decision rule (default: logit_adjusted for --metric class, argmax for overall): "
                        + DECISIONS.describe())
    p.add_argument("--per-attribute", action="store_true", help="separate weights for each attribute")
    p.add_argument("--folds", type=int, default=5, help="stratified CV folds over val for fitted weights")
    p.add_argument("--data", help="dataset root, if it moved since training (for recomputing TTA views)")
    p.add_argument("--name", default="ensemble", help="name of the ensemble entry on the leaderboard")
    p.add_argument("--out", help="folder for prediction.txt and prediction.zip (default WORKDIR/submission)")
    p.add_argument("--force", action="store_true", help="overwrite an existing prediction file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-report", action="store_true", help="skip rebuilding the runs folder's leaderboard")
    add_tracking_arguments(p)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    track = tracker_from_args(a)  # --track without a URI or without mlflow stops here, before any work
    from bench.artifacts import ArtifactError
    from bench.data import DatasetError
    from bench.ensembling.ensemble import EnsembleError, EnsembleSpec, make_ensemble
    from bench.training.trainer import pick_device
    wd = workdir.resolve(a.workdir)
    split_list = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    spec = EnsembleSpec(runs_dir=Path(a.runs_dir) if a.runs_dir else wd.runs, runs=split_list(a.runs),
                        models=split_list(a.models), views=split_list(a.tta) or ["plain"], combine=a.combine,
                        weights=a.weights, metric=a.metric or "overall", decision=a.decision, per_attribute=a.per_attribute, folds=a.folds,
                        data=Path(a.data) if a.data else None, name=a.name,
                        out=Path(a.out) if a.out else wd.submission, force=a.force, seed=a.seed)
    print(f"[ensemble] members from {spec.runs_dir}; submission to {spec.out}")
    try:
        result = make_ensemble(spec, pick_device())
    except (EnsembleError, ArtifactError, DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    track.log_ensemble(result, spec.runs_dir / "_ensembles" / spec.name, a.folds, a.seed)  # weights, tau, scores
    if not a.no_report:
        from bench.reporting.leaderboard import refresh_report
        refresh_report(spec.runs_dir, metric=a.metric)
    return result


if __name__ == "__main__":
    main()
