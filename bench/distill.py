"""Distil an ensemble into one model: a student trained on the ensemble's soft targets and the labels.

    python -m bench.distill --teacher ensemble --student tf_efficientnet_lite0 --pretrained PATH --size 128
    python -m bench.distill --teacher default,b --student resnet18 --mode online   # a list of runs, uniform mean

The teacher is an ensemble entry (RUNS/_ensembles/NAME, written by bench.ensemble --name NAME: its members, weights
and combiner) or a comma list of runs (uniform mean). Loss per attribute head: alpha * T^2 * KL(teacher_T ||
student_T) + (1 - alpha) * the recipe's loss on the label, summed over the heads (bench/distilling/kd.py). The
student trains like `bench.run` into RUNS/<run>/<student>/ (re-running the same command resumes or skips it), is
ranked on the leaderboard with `distilled from <teacher>`, and `bench.ensemble --runs <run>` fits its decision rule.
The library is bench/distilling/; this module parses arguments (torch loads after --help).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import workdir
from bench.metrics import TARGET_HELP, TARGETS
from bench.tracking import add_tracking_arguments, tracker_from_args
from bench.training.arguments import add_recipe_arguments, add_run_control_arguments, recipe_overrides
from zoo.recipes import RECIPE_NAMES

MODE_HELP = ("auto (default): views on the CPU, online on CUDA. views: the teacher labels --views V fixed augmented "
             "views of every training image once (crop, flip, rotation, jitter, with --mixup a partner image; drawn "
             "from --seed and stored with the probabilities in teacher_views.npz) and epoch e of the student trains "
             "on exactly view e mod V: the online mode's consistency at the cost of V teacher passes, once. online: "
             "every member runs on the student's augmented batch at each step (inference mode, autocast), so the "
             "target matches what the student sees; costs a forward pass of every member per step. cached: the "
             "teacher's probabilities for every training image, plain and mirrored, computed once and stored in the "
             "student's run folder (a resumed run reuses them); each step a mirrored image gets the mirrored view's "
             "target, any other the plain view's (the teacher does not see the crop, rotation or colour jitter): "
             "the cheapest (two teacher passes; none over the training images for a cross-fitted teacher), and "
             "measured below views (reports/reference/distill.md). Targets "
             "are in-sample when the members trained on the training images (more confident than on new images), "
             "out-of-fold when they were cross-fitted over train (bench.run --folds K --pool train; cached mode: "
             "their probs_train_oof.npz); run.json and the leaderboard row say which")


def build_parser() -> argparse.ArgumentParser:
    from bench.data import add_layout_arguments
    from bench.distilling import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, DEFAULT_VIEWS
    p = argparse.ArgumentParser(prog="python -m bench.distill", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:3]))
    p.add_argument("--teacher", required=True,
                   help="an ensemble entry's name (RUNS/_ensembles/NAME; bench.ensemble --name) or a comma list of "
                        "runs (run or run/model labels, uniform mean). An entry whose members were retrained after "
                        "it was written is refused (rebuild it with bench.ensemble --force)")
    p.add_argument("--student", required=True, help="a zoo name or any timm model name")
    p.add_argument("--mode", default="auto", choices=["auto", "cached", "online", "views"], help=MODE_HELP)
    p.add_argument("--views", type=int, metavar="V",
                   help=f"views mode (--mode views, or auto on the CPU): how many stored views per training image "
                        f"(at least 1; default {DEFAULT_VIEWS}); epoch e trains on view e mod V")
    p.add_argument("--mixup", type=float, metavar="ALPHA",
                   help="views mode (--mode views, or auto on the CPU): mix each view with another training image's "
                        "view of the same v, lam ~ Beta(ALPHA, ALPHA) (drawn from --seed, stored); the teacher labels "
                        "the mixed image, the label term is the mixup loss of both labels (default: no mixup)")
    p.add_argument("--init", metavar="RUN/MODEL|FILE.safetensors",
                   help="start the student from a finished run's weights (its best.pt; RUN/MODEL under --out) or a "
                        "file from bench.export --format safetensors, instead of the recipe's --pretrained start; it "
                        "must be the same model with the same attributes, classes and head (refused otherwise). "
                        "Recorded in run.json; the leaderboard row names it")
    p.add_argument("--temperature", "-T", type=float, default=DEFAULT_TEMPERATURE,
                   help=f"T: the teacher's combined distribution p becomes p^(1/T) renormalised, the student's "
                        f"softmax(z / T) (default {DEFAULT_TEMPERATURE:g}; recorded in run.json)")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help=f"weight of the distillation term (x T^2); 1 - alpha weighs the recipe's loss on the label "
                        f"(default {DEFAULT_ALPHA:g}; 0: plain training, 1: the teacher alone)")
    p.add_argument("--refit", action="store_true",
                   help="after the val run, distil again on train + val for the epochs it used, the targets from the "
                        "members' test weights (their refit models where they have them); its test probabilities "
                        "become the student's, the val statistics stay the val run's (like bench.run --refit)")
    p.add_argument("--unlabelled", metavar="test|FOLDER|LISTFILE",
                   help="also train on these images, labelled by the teacher only (label -1: the distillation term "
                        "alone): the test split, a folder of images, or a file listing image paths (relative to the "
                        "file). Transductive whenever any of them is a test-split image, however named (run.json "
                        "and the leaderboard row say so, with how many). Recorded in run.json; off by default")
    p.add_argument("--recipe", choices=RECIPE_NAMES,
                   help="recipe preset (zoo/recipes.py); default: finetune when the student starts from pretrained "
                        "weights, scratch from random init")
    p.add_argument("--metric", choices=list(TARGETS),
                   help=TARGET_HELP + " (default overall); recipes that pick their epoch on val pick it by this metric")
    p.add_argument("--run", help="run name: the student goes to OUT/RUN/STUDENT (default distill-<teacher>)")
    p.add_argument("--out", help="runs folder, where the teacher's runs and entry are and the student goes (default "
                                 "WORKDIR/runs)")
    workdir.add_argument(p)
    p.add_argument("--data", help="dataset root (default: the one the teacher's members trained on)")
    add_layout_arguments(p)
    add_recipe_arguments(p)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add_run_control_arguments(p)  # --data-mode, --compile, --checkpoint-every, --precision, --seed
    p.add_argument("--force", action="store_true",
                   help="retrain the student (and relabel its teacher targets or views)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-report", action="store_true", help="skip rebuilding the leaderboard")
    add_tracking_arguments(p)
    return p


def fail(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv=None) -> dict:
    a = build_parser().parse_args(argv)
    track = tracker_from_args(a)  # --track without a URI or without mlflow stops here, before any work
    from bench.artifacts import ArtifactError, ClaimError
    from bench.data import DatasetError, layout_args
    from bench.distilling.distill import DistillSpec, distill
    from bench.distilling.teacher import TeacherError
    from bench.training.trainer import ConfigMismatch, NonFiniteLoss, OutOfMemory, pick_device
    from zoo import UnknownModel
    from zoo.recipes import RECIPES
    wd = workdir.resolve(a.workdir)
    out = Path(a.out) if a.out else wd.runs
    if a.checkpoint_every is not None and not a.checkpoint_every >= 0:
        fail(f"--checkpoint-every {a.checkpoint_every}: must be a number of seconds >= 0")
    try:
        overrides = recipe_overrides(a)
        RECIPES[a.recipe if a.recipe in RECIPES else "scratch"].updated(**overrides)  # bad flags fail before data
        device = pick_device(a.device)
        from bench.training.precision import setup
        print(setup(a.precision, device))  # the process's precision (not in the config) and CPU threads
        layout = layout_args(a)
        if not a.data and (layout["labels"] or layout["val_fraction"] is not None):
            raise ValueError("--labels / --val-fraction need --data")
        spec = DistillSpec(teacher=a.teacher, student=a.student, runs_dir=out, run=a.run, recipe=a.recipe,
                           overrides=overrides, metric=a.metric or "overall", mode=a.mode, temperature=a.temperature,
                           alpha=a.alpha, refit=a.refit, unlabelled=a.unlabelled,
                           data=Path(a.data) if a.data else None,
                           layout=layout if (layout["labels"] or layout["val_fraction"] is not None) else None,
                           seed=a.seed, force=a.force, progress=not a.no_progress, data_mode=a.data_mode,
                           compile=a.compile, checkpoint_every=a.checkpoint_every, views=a.views,
                           mixup=a.mixup, init=a.init)
        from bench.distilling.distill import default_run_name
        model_dir = out / (a.run or default_run_name(a.teacher)) / a.student
        with track.model_run(f"{model_dir.parent.name}/{a.student}", model_dir) as tracked:  # bench/tracking.py
            meta = distill(spec, device, on_epoch=None if a.refit else tracked.chain())  # refit: from artifacts
            tracked.finish(meta)
        if a.refit:
            track.log_refit(model_dir, meta)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the student's last saved state is in {out}/<run>/{a.student}/last.pt; run the same "
              f"command again to resume", file=sys.stderr)
        raise SystemExit(130)
    except (TeacherError, DatasetError, UnknownModel, ArtifactError, KeyError, ValueError, FileNotFoundError) as e:
        fail(e.args[0] if isinstance(e, KeyError) and e.args else str(e))
    except ClaimError as e:
        fail(str(e), 1)
    except (ConfigMismatch, NonFiniteLoss, OutOfMemory) as e:
        fail(str(e), 1)
    if not a.no_report:
        from bench.reporting.leaderboard import refresh_report
        refresh_report(out, metric=a.metric)
    return meta


if __name__ == "__main__":
    main()
