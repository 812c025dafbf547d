"""Train zoo models the same fair way and leave their artifacts under runs/<run>/<model>/.

    python -m bench.run --models resnet18,effb3                 # built-in demo data unless --data / $FASHION_DATA
    python -m bench.run --models resnet50 --recipe fashionnet --data ROOT
    python -m bench.run --list
    torchrun --nproc-per-node 4 -m bench.run --models resnet50   # one model, data parallel over 4 GPUs

Re-running the same command resumes an interrupted model from its last saved epoch and skips finished ones.
Artifacts go to WORKDIR/runs/ (--workdir, $FASHION_BENCH_HOME, else the current directory). The training library is
bench/training/; this module only parses arguments (torch loads after --help).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench import workdir
from bench.fanout import check_devices, follow_parent, run_children, to_argv
from bench.metrics import TARGET_HELP, TARGETS
from bench.replicas import SEEDS_HELP, ReplicaError, check_planned, folder_name, parse_seeds, planned_identity, \
    replica_meta
from bench.tracking import NullTracker, add_tracking_arguments, tracker_from_args
from bench.training.arguments import add_recipe_arguments, add_run_control_arguments, recipe_overrides
from zoo.recipes import RECIPE_NAMES, RECIPES



def build_parser() -> argparse.ArgumentParser:
    from bench.data import add_layout_arguments
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,effb3", help="comma-separated zoo names or timm model names")
    p.add_argument("--list", action="store_true", help="print the zoo and exit")
    p.add_argument("--data", help="dataset root (default $FASHION_DATA, else the built-in demo set): a FashionDataset "
                   "(ROOT/split/) or a CSV dataset (ROOT/labels.csv)")
    add_layout_arguments(p)
    p.add_argument("--recipe", choices=RECIPE_NAMES,
                   help="recipe preset (zoo/recipes.py); default: finetune when the backbone starts from pretrained "
                        "weights, scratch when it starts from random init")
    p.add_argument("--metric", choices=list(TARGETS),
                   help=TARGET_HELP + " (default overall; with --from-study the study's); recipes that pick their "
                        "epoch on val pick it by this metric (the finetune and scratch recipes keep their last "
                        "epoch); both metrics are always printed")
    p.add_argument("--run", help="run name: artifacts go to OUT/RUN/MODEL (default: the --recipe given, else default)")
    p.add_argument("--folds", type=int, metavar="K",
                   help="k-fold cross-fitting over train + val (--pool train: over train alone): K models per "
                        "member, each predicting the fold it did "
                        "not see (out-of-fold scores on every labelled image), test = their mean "
                        "(bench/training/kfold.py)")
    p.add_argument("--fold-seed", type=int, default=0, help="seed of the stratified fold assignment (recorded)")
    p.add_argument("--pool", choices=["train+val", "train"],
                   help="with --folds: what the K folds split (default train+val). train: cross-fit over the train "
                        "split alone, for distillation targets (bench.distill): each training image predicted by "
                        "the fold model that never saw it (probs_train_oof.npz), val and test by the mean of the K "
                        "models, so the member is scored on val like a normal run")
    p.add_argument("--refit", action="store_true",
                   help="after the normal run, train again on train + val for the epochs it used; the refit model "
                        "writes the test probabilities, the val statistics stay the val run's")
    p.add_argument("--out", help="runs folder (default WORKDIR/runs)")
    workdir.add_argument(p)
    p.add_argument("--from-study", help="train with the best parameters and trial budget of this Optuna study")
    p.add_argument("--storage", help="study storage URL for --from-study (default: WORKDIR/studies/fashion.db)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--devices", metavar="LIST",
                   help="e.g. cuda:0,cuda:1: one process per device, sharing the models (each trained once, the "
                        "leaderboard written once at the end); cpu,cpu works too. Children print lines, no bars")
    p.add_argument("--skip-claimed", action="store_true",
                   help="move on to the next model when another process or host holds one's claim, instead of "
                        "stopping (what --devices children do; start the same command per host sharing OUT)")
    add_run_control_arguments(p)  # --data-mode, --compile, --checkpoint-every, --precision, --seed
    p.set_defaults(seed=None)  # None: not given (0), so that --seed beside --seeds is refused
    p.add_argument("--seeds", metavar="LIST", help=SEEDS_HELP)
    p.add_argument("--force", action="store_true", help="retrain models that already have artifacts")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-report", action="store_true",
                   help="skip rebuilding the leaderboard (WORKDIR/reports/ for WORKDIR/runs, else OUT/_report/)")
    add_tracking_arguments(p)
    add_recipe_arguments(p)  # --pretrained, --epochs ... --loss, --ema, --set (shared with bench.distill)
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def study_metric(study: str, url: str, given: str | None) -> str | None:
    """The target metric of a --from-study run: --metric when given, else the one the study was tuned for (None for
    a Pareto or balanced-accuracy study: the recipe's own selection, as in its trials); prints which."""
    import optuna

    from bench.tuning.storage import open_storage
    from bench.tuning.study import OBJECTIVES
    objective = optuna.load_study(study_name=study, storage=open_storage(url)).user_attrs.get("objective")
    tuned = next((name for name, metrics in OBJECTIVES.items() if metrics == objective), None)
    if given is not None:
        if tuned is not None and tuned != given:
            print(f"[study {study}] tuned for --metric {tuned}; this run uses --metric {given} (given)")
        return given
    if tuned is None:
        print(f"[study {study}] records no target metric: target metric overall (--metric sets it)")
        return "overall"
    print(f"[study {study}] target metric {tuned} (the one it was tuned for; --metric overrides)"
          + ("" if tuned in TARGETS else "; epochs selected by the recipe's own rule, as in its trials"))
    return tuned if tuned in TARGETS else None


def fail(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv=None) -> list[dict]:
    parser = build_parser()
    a = parser.parse_args(argv)
    import pandas as pd

    from bench.artifacts import ArtifactError, ClaimError, read_run
    from bench.errors import StorageError
    from bench.data import DatasetError, layout_args, open_dataset, resolve_root
    from bench.training.trainer import ConfigMismatch, NonFiniteLoss, OutOfMemory, pick_device
    from bench.training.distributed import check_batch
    from bench.training.kfold import refit, train_kfold
    from bench.training.train import (ImageStore, choose_data_mode, decoded_bytes, demo_settings, resolve_recipe,
                                      train_model)
    from zoo import UnknownModel, zoo_table
    if a.list:
        print(pd.DataFrame(zoo_table()).to_string(index=False))
        print("\nAny timm model name also works (timm.list_models()).")
        table = pd.DataFrame({name: r.to_dict() for name, r in RECIPES.items()}).drop(index="name")
        print(f"\nRecipes (--recipe {'|'.join(RECIPE_NAMES)}; `default` is finetune when the backbone starts from "
              f"pretrained weights, scratch from random init; zoo/recipes.py gives the reason for each value; "
              f"size None = the model's own):\n{table.to_string()}")
        return []
    names = [m.strip() for m in a.models.split(",") if m.strip()]
    if not names:
        fail("--models names no model; e.g. --models resnet18,effb3 (python -m bench.run --list shows the zoo)")
    if a.checkpoint_every is not None and not a.checkpoint_every >= 0:
        fail(f"--checkpoint-every {a.checkpoint_every}: must be a number of seconds >= 0")
    if a.folds is not None and a.refit:
        fail("--folds and --refit: give one (a k-fold member's test probabilities already average its K models; "
             "--refit follows a normal train/val run)")
    if a.folds is not None and a.folds < 2:
        fail(f"--folds {a.folds}: k-fold needs at least 2 folds")
    if a.pool is not None and a.folds is None:
        fail(f"--pool {a.pool}: only with --folds K (what the K folds split)")
    if a.seeds is not None and a.seed is not None:
        fail(f"--seeds {a.seeds} and --seed {a.seed}: give one (--seeds trains one replica per seed)")
    try:
        seeds = parse_seeds(a.seeds) if a.seeds is not None else None
    except ReplicaError as e:
        fail(str(e))
    try:
        overrides = recipe_overrides(a)
    except ValueError as e:  # a malformed --set, or a field given twice
        fail(str(e))
    track = tracker_from_args(a)  # before any work: --track without a URI or without mlflow stops here
    recipe_name = a.recipe
    wd = workdir.resolve(a.workdir)
    try:
        RECIPES[a.recipe if a.recipe in RECIPES else "scratch"].updated(**overrides)  # bad flags fail before data
        dist = start_distributed(a)
        if a.devices is not None and a.device != "auto":
            raise ValueError(f"--device {a.device} and --devices {a.devices}: give one of them (--devices runs one "
                             f"process per device)")
        devices = check_devices(a.devices, a.device, pick_device)  # every device checked before any work starts
        device = pick_device(devices[0])
        device = dist.device if dist.enabled else device
        root = resolve_root(a.data)
        ds = open_dataset(root, **layout_args(a))
        metric = a.metric or "overall"
        if a.from_study:  # the study's parameters, trial budget, base recipe and metric, where no flag set them
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
            metric = study_metric(a.from_study, url, a.metric)
        overrides = demo_settings(a.data, overrides, root)
        plans = [(n, *resolve_recipe(n, recipe_name, overrides, metric)) for n in names]
        for _, recipe, _ in plans:  # torchrun: N processes share each recipe's global batch equally
            check_batch(recipe.batch_size, dist.world)
        if dist.enabled and (a.folds or a.refit):
            raise ValueError("--folds and --refit run in one process: start them without torchrun (--devices "
                             "trains several models at once)")
    except (DatasetError, UnknownModel, KeyError, ValueError, FileNotFoundError, StorageError) as e:
        fail(e.args[0] if isinstance(e, KeyError) and e.args else str(e))  # a KeyError's str() adds quotes
    run = a.run or a.recipe or "default"
    out = Path(a.out) if a.out else wd.runs
    print(f"[run] artifacts in {out / run}/<model>/" if seeds is None else
          f"[run] {len(seeds)} replicas per model (seeds {a.seeds}): artifacts in {out / run}/<model>-seed<k>/")
    try:  # a replica that would differ from its set's others in more than the seed: before any training
        for n, recipe, size in plans if seeds is not None else ():
            check_planned(out / run, n, planned_identity(n, size, ds.fingerprint(), recipe.to_dict(), a.folds,
                                                         a.fold_seed, a.pool), seeds, a.force)
    except ReplicaError as e:
        fail(str(e))
    if len(devices) > 1:
        return fan_out(parser, a, names, devices, out / run, out, a.metric or (metric if a.from_study else None),
                       seeds)
    mode, why = choose_data_mode(a.data_mode, decoded_bytes(ds, [(r, z) for _, r, z in plans], dist), device)
    print(f"[data] {mode}: {why}")
    from bench.training.precision import setup
    print(setup(a.precision, device))  # the process's precision (not in the config) and CPU threads
    store = ImageStore(ds, device, progress=not a.no_progress, dist=dist, mode=mode, mode_reason=why)
    track = track if dist.main else NullTracker()  # under torchrun rank 0 alone logs
    results = []
    for name, recipe, size, seed, model_dir in work_units(plans, seeds, a.seed, out / run):
        try:
            kw = dict(progress=not a.no_progress, force=a.force, compile=a.compile,
                      checkpoint_every=a.checkpoint_every,
                      extra_meta={**({"from_study": a.from_study} if a.from_study else {}),
                                  **(replica_meta(name, seed) if seeds is not None else {})} or None)
            label = f"{run}/{model_dir.name}"
            if a.folds:  # one MLflow run for the member, its folds nested (bench/tracking.py)
                with track.model_run(label, model_dir, recipe, size, seed) as tracked:
                    meta = train_kfold(name, ds, store, recipe, size, model_dir, a.folds, seed, a.fold_seed,
                                       pool_name=a.pool or "train+val", **kw)
                    tracked.finish(meta)
                results.append(meta)
                continue
            with track.model_run(label, model_dir, recipe, size, seed) as tracked:
                meta = train_model(name, ds, store, recipe, size, model_dir, seed, on_epoch=tracked.chain(), **kw)
                tracked.finish(meta)
            if a.refit:  # the refit training nested in the val run's MLflow run
                with track.under_dir(model_dir).model_run(f"{label}/refit", model_dir / "refit") as tracked:
                    meta = refit(name, ds, store, recipe, size, model_dir, seed, on_epoch=tracked.chain(),
                                 **{k: v for k, v in kw.items() if k != "extra_meta"})
                    tracked.finish(read_run(model_dir / "refit").meta)
                track.log_refit(model_dir, meta)
            results.append(meta)
        except KeyboardInterrupt:
            print(f"\ninterrupted: {name}'s last saved state is in {model_dir / 'last.pt'}; "
                  f"run the same command again to resume", file=sys.stderr)
            raise SystemExit(130)
        except ClaimError as e:
            if not a.skip_claimed:
                fail(str(e), 1)
            print(f"[{name}] skipped: {str(e).split('; ')[0]}; moving on (--skip-claimed)")
        except (ConfigMismatch, NonFiniteLoss, OutOfMemory, DatasetError, ValueError) as e:
            fail(str(e), 1)
        except ArtifactError as e:  # e.g. a resumable state refused by the safe loader (bench/checkpoints.py)
            fail(str(e), 2)
    if not a.no_report and dist.main:
        from bench.reporting.leaderboard import refresh_report
        refresh_report(out, metric=a.metric or (metric if a.from_study else None))  # None: the report's own
    dist.close()
    return results


def work_units(plans, seeds: list[int] | None, seed: int | None, run_dir: Path):
    """(model, recipe, size, seed, model folder) of each training: one per model (folder RUN/MODEL, `seed`, default
    0), or with --seeds one per model and seed (RUN/MODEL-seed<k>, bench/replicas.py), seed by seed, so that one
    replica of every model finishes before the second of any."""
    if seeds is None:
        return [(n, r, z, 0 if seed is None else seed, run_dir / n) for n, r, z in plans]
    return [(n, r, z, s, run_dir / folder_name(n, s)) for s in seeds for n, r, z in plans]


def start_distributed(a):
    """Under torchrun (WORLD_SIZE > 1): join the process group and return this process's Dist; otherwise the
    single-process Dist(). Every rank runs this same command, so ranks other than 0 print nothing to stdout (their
    lines would repeat N times); errors still reach stderr from every rank."""
    from bench.training.distributed import from_env
    dist = from_env(a.device)
    if dist.enabled:
        if a.devices is not None:
            raise ValueError(f"--devices {a.devices} under torchrun: torchrun already started one process per device "
                             f"(cuda:LOCAL_RANK); drop --devices, or run without torchrun to train several models "
                             f"one per device")
        if not dist.main:
            sys.stdout = open(os.devnull, "w")
    return dist


def fan_out(parser, a, names: list[str], devices: list[str], run_dir: Path, out: Path,
            report_metric: str | None = None, seeds: list[int] | None = None) -> list[dict]:
    """One child `bench.run` per device over all the models, each starting at another one and skipping models a
    process already holds (--skip-claimed), so each model is trained once, also with other hosts sharing OUT;
    the leaderboard is built here, once, after every child has finished. Returns the finished models' run.json."""
    from bench.artifacts import ArtifactError, read_run
    units = len(names) * len(seeds or [None])  # trainings: a model, or with --seeds each of its replicas
    if len(devices) > units:
        print(f"[run] {units} training(s): using the first {units} of --devices {','.join(devices)}")
        devices = devices[:units]
    # child i starts at training i (seed by seed, as work_units orders them): models and seeds rotated to it
    rot = lambda xs, k: xs[k % len(xs):] + xs[:k % len(xs)]  # noqa: E731
    args = [to_argv(parser, a, models=",".join(rot(names, i)), device=d, devices=None, skip_claimed=True,
                    no_progress=True, no_report=True,
                    **({"seeds": ",".join(map(str, rot(seeds, i // len(names))))} if seeds else {}))
            for i, d in enumerate(devices)]
    done = run_children("bench.run", devices, args)
    if done.interrupted:
        print(f"\ninterrupted: each model's last saved state is in {run_dir}/<model>/last.pt; run the same command "
              f"again to resume", file=sys.stderr)
        raise SystemExit(130)
    if done.failed:
        for child in done.failed:
            print(f"error: {child.describe()}", file=sys.stderr)
        fail(f"{len(done.failed)} of {len(devices)} processes failed (above); the other models are in {run_dir}; "
             f"fix the cause and run the same command again (finished models are skipped)", 1)
    results = []
    for name in [n if seeds is None else folder_name(n, s) for s in seeds or [None] for n in names]:
        try:
            meta = read_run(run_dir / name).meta
        except ArtifactError:
            meta = {}
        if meta.get("status") == "done":
            results.append(meta)
        else:  # --skip-claimed left it to a process outside this command (another host): it is not ours to wait for
            print(f"note: {name} is not finished: another process holds {run_dir / name / '.claim'}; its row "
                  f"appears when the leaderboard is rebuilt after it finishes (python -m bench.report)")
    if not a.no_report:
        from bench.reporting.leaderboard import refresh_report
        refresh_report(out, metric=report_metric)
    return results


if __name__ == "__main__":
    follow_parent()  # a --devices child stops when its parent dies
    main()
