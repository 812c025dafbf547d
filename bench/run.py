"""Train zoo models the same fair way and leave their artifacts under runs/<run>/<model>/.

    python -m bench.run --models resnet18,effb3                 # built-in demo data unless --data / $FASHION_DATA
    python -m bench.run --models resnet50 --recipe fashionnet --data ROOT
    python -m bench.run --list

Re-running the same command resumes an interrupted model from its last saved epoch and skips finished ones.
Artifacts go to WORKDIR/runs/ (--workdir, $FASHION_BENCH_HOME, else the current directory). The training library is
bench/training/; this module only parses arguments (torch loads after --help).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import workdir
from bench.training.schemes import LOSSES
from zoo.recipes import RECIPE_NAMES, RECIPES

# Recipe fields settable from the command line (zoo/recipes.py says what each does).
RECIPE_FLAGS = {"epochs": int, "size": int, "batch_size": int, "lr": float, "weight_decay": float, "dropout": float,
                "label_smoothing": float, "loss": str}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,effb3", help="comma-separated zoo names or timm model names")
    p.add_argument("--list", action="store_true", help="print the zoo and exit")
    p.add_argument("--data", help="FashionDataset root (default $FASHION_DATA, else the built-in demo set)")
    p.add_argument("--recipe", choices=RECIPE_NAMES,
                   help="recipe preset (zoo/recipes.py); default: finetune when the backbone starts from pretrained "
                        "weights, scratch when it starts from random init")
    p.add_argument("--run", help="run name: artifacts go to OUT/RUN/MODEL (default: the recipe name)")
    p.add_argument("--out", help="runs folder (default WORKDIR/runs)")
    workdir.add_argument(p)
    p.add_argument("--pretrained", help="auto | none | PATH to a weights file (default: the recipe's, auto)")
    p.add_argument("--from-study", help="train with the best parameters and trial budget of this Optuna study")
    p.add_argument("--storage", help="study storage URL for --from-study (default: WORKDIR/studies/fashion.db)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--compile", default="off", choices=["auto", "on", "off"],
                   help="torch.compile the training step: on, off, or auto (on for CUDA) (default off)")
    p.add_argument("--checkpoint-every", type=float, metavar="SECONDS",
                   help="save the resumable state at the first epoch boundary after this many seconds (0: every "
                        "epoch; default: 50x the cost of one save, i.e. < 2%% of training time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="retrain models that already have artifacts")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-report", action="store_true",
                   help="skip rebuilding the leaderboard (WORKDIR/reports/ for WORKDIR/runs, else OUT/_report/)")
    for field, kind in RECIPE_FLAGS.items():
        if field == "loss":  # choices and their meaning from the loss-scheme registry
            p.add_argument("--loss", choices=LOSSES.names(), help="override the recipe's class-imbalance treatment: "
                           + LOSSES.describe())
            continue
        p.add_argument(f"--{field.replace('_', '-')}", type=kind, help=f"override the recipe's {field}")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None, help="weight EMA on/off")
    return p.parse_args(argv)


def fail(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv=None) -> list[dict]:
    a = parse_args(argv)
    import pandas as pd

    from bench.artifacts import ClaimError
    from bench.errors import StorageError
    from bench.data import DatasetError, open_dataset, resolve_root
    from bench.training.trainer import ConfigMismatch, NonFiniteLoss, OutOfMemory, pick_device
    from bench.training.train import ImageStore, demo_settings, resolve_recipe, train_model
    from zoo import UnknownModel, zoo_table
    if a.list:
        print(pd.DataFrame(zoo_table()).to_string(index=False))
        print(f"\nAny timm model name also works (timm.list_models()). Recipes: {', '.join(RECIPE_NAMES)}.")
        return []
    names = [m.strip() for m in a.models.split(",") if m.strip()]
    if not names:
        fail("--models names no model; e.g. --models resnet18,effb3 (python -m bench.run --list shows the zoo)")
    if a.checkpoint_every is not None and not a.checkpoint_every >= 0:
        fail(f"--checkpoint-every {a.checkpoint_every}: must be a number of seconds >= 0")
    overrides = {k: getattr(a, k) for k in (*RECIPE_FLAGS, "ema", "pretrained")}
    recipe_name = a.recipe
    wd = workdir.resolve(a.workdir)
    try:
        RECIPES[a.recipe if a.recipe in RECIPES else "scratch"].updated(**overrides)  # bad flags fail before data
        device = pick_device(a.device)
        root = resolve_root(a.data)
        ds = open_dataset(root)
        if a.from_study:  # the study's parameters, trial budget and base recipe, where no flag set them
            from bench.tuning.storage import best_params, default_url, study_base
            url = a.storage or default_url(wd)
            overrides.update({k: v for k, v in best_params(a.from_study, url).items()
                              if overrides.get(k) is None})
            base, tuned_model = study_base(a.from_study, url)
            if recipe_name is None and base:
                recipe_name = base
                print(f"[study {a.from_study}] base recipe {base} (the one it tuned; --recipe overrides)")
            if tuned_model and names != [tuned_model]:
                print(f"warning: study {a.from_study} tuned {tuned_model}; applying its parameters to "
                      f"{', '.join(names)}", file=sys.stderr)
        overrides = demo_settings(a.data, overrides, root)
        plans = [(n, *resolve_recipe(n, recipe_name, overrides)) for n in names]
    except (DatasetError, UnknownModel, KeyError, ValueError, FileNotFoundError, StorageError) as e:
        fail(str(e).strip("'\""))
    run = a.run or a.recipe or "default"
    out = Path(a.out) if a.out else wd.runs
    print(f"[run] artifacts in {out / run}/<model>/")
    store = ImageStore(ds, device, progress=not a.no_progress)
    results = []
    for name, recipe, size in plans:
        model_dir = out / run / name
        try:
            results.append(train_model(name, ds, store, recipe, size, model_dir, a.seed, progress=not a.no_progress,
                                       force=a.force, compile=a.compile, checkpoint_every=a.checkpoint_every,
                                       extra_meta={"from_study": a.from_study} if a.from_study else None))
        except KeyboardInterrupt:
            print(f"\ninterrupted: {name}'s last saved state is in {model_dir / 'last.pt'}; "
                  f"run the same command again to resume", file=sys.stderr)
            raise SystemExit(130)
        except (ConfigMismatch, NonFiniteLoss, OutOfMemory, DatasetError, ClaimError) as e:
            fail(str(e), 1)
    if not a.no_report:
        from bench.reporting.leaderboard import build_report
        build_report(out)
    return results


if __name__ == "__main__":
    main()
