"""Replicas: one model trained once per seed (`bench.run --seeds 0,1,2`). The one place that knows how replicas lie
on disk, which runs are replicas of one another, and what they may differ in.

Layout: each replica is a complete, ordinary run folder RUNS/<run>/<model>-seed<k>/ (claimed, resumable, a k-fold
member or a refit like any run), so every reader that takes a run folder (bench.predict, export, distill, ensemble,
tracking, the leaderboard) reads a replica unchanged. Its run.json records the seed in its config, as every run's
does, and `replica: {"of": <model>, "seed": k}`. The replicas of one *set* are the folders of one run folder with
the same `of`; the set is named `<run>/<model>`, the label the model would have had if trained once.

The replicas of one set differ in the seed alone (`identity`: the whole config but the seed, the dataset
fingerprint included, and the k-fold partition). bench.run refuses to add a replica that differs from the set's
others, and the leaderboard refuses a set whose replicas differ (ReplicaError), rather than average different
things. Runs that are not replicas (no `replica` in run.json) are never merged with anything.
"""
from __future__ import annotations

import re
from pathlib import Path

SUFFIX = "-seed"
SEEDS_HELP = ("train each model once per seed, e.g. 0,1,2: one run folder per replica, RUN/MODEL-seed<k>/ (resume, "
              "claims, --devices, --folds, --refit and --track work per replica; run.json records the seed). The "
              "leaderboard shows a model's replicas as one row: the mean over seeds, their spread and an interval "
              "counting seeds and images (bench/replicas.py). Not with --seed")


class ReplicaError(ValueError):
    """Replicas under one name that differ in more than the seed, or a --seeds list that names no valid seeds."""


def parse_seeds(text: str) -> list[int]:
    """The seeds of `--seeds TEXT` (comma-separated integers >= 0, each once); ReplicaError says what is wrong."""
    items = [s.strip() for s in str(text).split(",")]
    if not any(items):
        raise ReplicaError(f"--seeds {text!r}: names no seed; give comma-separated integers, e.g. --seeds 0,1,2")
    bad = [s for s in items if not re.fullmatch(r"\d+", s)]
    if bad:
        raise ReplicaError(f"--seeds {text!r}: {', '.join(repr(b) for b in bad)} is not an integer >= 0; give "
                           f"comma-separated integers, e.g. --seeds 0,1,2")
    seeds = [int(s) for s in items]
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ReplicaError(f"--seeds {text!r}: seed {', '.join(map(str, twice))} given twice; each seed trains one "
                           f"replica, so give each once")
    return seeds


def folder_name(model: str, seed: int) -> str:
    """The run folder of `model`'s replica with `seed`, inside its run folder."""
    return f"{model}{SUFFIX}{seed}"


def replica_meta(model: str, seed: int) -> dict:
    """What bench.run adds to a replica's run.json."""
    return {"replica": {"of": model, "seed": seed}}


def set_name(run_dir: Path, meta: dict) -> str | None:
    """`<run>/<model>` for a replica's folder `run_dir` (RUNS/<run>/<model>-seed<k>) and its run.json `meta`; None
    for a run that is not a replica."""
    rep = meta.get("replica")
    if not isinstance(rep, dict) or "of" not in rep:
        return None
    return f"{Path(run_dir).parent.name}/{rep['of']}"


def seed_of(meta: dict) -> int | None:
    rep = meta.get("replica") or {}
    return rep.get("seed", (meta.get("config") or {}).get("seed"))


def folds_of(meta: dict) -> tuple | None:
    """The k-fold partition a run's scores come from: ("kfold", K, fold seed), ("crossfit", K, fold seed) or None."""
    for kind in ("kfold", "crossfit"):
        if isinstance(meta.get(kind), dict):
            return kind, meta[kind].get("k"), meta[kind].get("seed")
    return None


def identity(meta: dict) -> dict:
    """What replicas of one set must share: the run's config without its seed (model, image size, dataset
    fingerprint, recipe with every field: epochs, lr, ...; a recipe recorded before a field existed reads it as its
    default, as resuming does) and its k-fold partition."""
    from bench.training.train import with_new_fields  # the rule resuming uses; imports torch
    config = with_new_fields(dict(meta.get("config") or {}))
    return {**{k: v for k, v in config.items() if k != "seed"}, "folds": folds_of(meta)}


def planned_identity(model: str, size: int, dataset: str, recipe: dict, folds: int | None, fold_seed: int,
                     pool: str | None) -> dict:
    """The fields of `identity` that bench.run sets, for a replica it is about to train."""
    kind = None if not folds else ("crossfit" if pool == "train" else "kfold")
    return {"model": model, "size": size, "dataset": dataset, "recipe": recipe,
            "folds": None if kind is None else (kind, folds, fold_seed)}


def differences(a: dict, b: dict, keys=None) -> list[str]:
    """The fields in which two identities differ (recipe fields as recipe.FIELD), over `keys` (default: all)."""
    out = []
    for k in keys or sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if k == "folds":  # a tuple and the list JSON made of it are the same partition
            x, y = (tuple(v) if v is not None else None for v in (x, y))
        if x == y:
            continue
        if k == "recipe" and isinstance(x, dict) and isinstance(y, dict):
            out += [f"recipe.{f}" for f in sorted(set(x) | set(y)) if x.get(f) != y.get(f)]
        else:
            out.append(k)
    return out


def describe(identity_: dict, fields: list[str]) -> str:
    def value(f):
        if f.startswith("recipe."):
            return (identity_.get("recipe") or {}).get(f.split(".", 1)[1])
        return identity_.get(f)
    return ", ".join(f"{f} {value(f)!r}" for f in fields)


def check_set(name: str, members: list[tuple[Path, dict]]) -> None:
    """ReplicaError when the replicas (folder, run.json) of set `name` differ in more than the seed, or two of them
    have the same seed; the message names the folders and the fields."""
    if len(members) < 2:
        return
    first_dir, first = members[0]
    ref = identity(first)
    for folder, meta in members[1:]:
        diff = differences(ref, identity(meta))
        if diff:
            raise ReplicaError(
                f"replicas of {name} differ in more than the seed: {first_dir / 'run.json'} has "
                f"{describe(ref, diff)}, {folder / 'run.json'} has {describe(identity(meta), diff)}. Replicas of one "
                f"model must share recipe, size, epochs and dataset; move one to another run folder (--run) or "
                f"retrain it with the set's settings (--force)")
    seeds: dict = {}
    for folder, meta in members:
        seeds.setdefault(seed_of(meta), []).append(folder)
    twice = {s: f for s, f in seeds.items() if len(f) > 1}
    if twice:
        s, folders = next(iter(twice.items()))
        raise ReplicaError(f"replicas of {name} share seed {s}: {', '.join(str(f / 'run.json') for f in folders)}; "
                           f"each replica is one seed")


def existing(run_dir: Path, model: str) -> list[tuple[Path, dict]]:
    """The replica folders of `model` in run folder `run_dir` that have a readable run.json (folder, meta)."""
    from bench.artifacts import ArtifactError, read_run
    out = []
    for path in sorted(Path(run_dir).glob(f"{glob_escape(model)}{SUFFIX}*/run.json")):
        try:
            meta = read_run(path.parent).meta
        except ArtifactError:
            continue
        if isinstance(meta, dict) and (meta.get("replica") or {}).get("of") == model:
            out.append((path.parent, meta))
    return out


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def check_planned(run_dir: Path, model: str, planned: dict, seeds: list[int], force: bool) -> None:
    """Before bench.run trains `model`'s replicas `seeds` into `run_dir`: ReplicaError when a replica already there
    (one that this command does not retrain with --force) differs from the planned settings in more than the seed."""
    keys = list(planned)
    for folder, meta in existing(run_dir, model):
        if force and seed_of(meta) in seeds:
            continue  # retrained now with the planned settings
        diff = differences(planned, {k: identity(meta).get(k) for k in keys}, keys)
        if diff:
            raise ReplicaError(
                f"{folder / 'run.json'} is a replica of {run_dir.name}/{model} (seed {seed_of(meta)}) with "
                f"{describe(identity(meta), diff)}; this command would train seeds {','.join(map(str, seeds))} with "
                f"{describe(planned, diff)}. Replicas of one model must share recipe, size, epochs and dataset: use "
                f"another --run name, or the set's settings")


def group(arts: list, key=lambda a: (a.dir, a.meta)) -> tuple[dict[str, list], list]:
    """Split `arts` into replica sets (set name -> its items, in seed order) and the rest, in their order;
    `key(item)` gives its (folder, run.json)."""
    sets: dict[str, list] = {}
    rest = []
    for item in arts:
        folder, meta = key(item)
        name = set_name(folder, meta)
        if name is None:
            rest.append(item)
        else:
            sets.setdefault(name, []).append(item)
    for name in sets:
        sets[name].sort(key=lambda item: (seed_of(key(item)[1]) is None, seed_of(key(item)[1]) or 0))
    return sets, rest


def matches(art, runs: list[str] | None, models: list[str] | None) -> bool:
    """Whether a run folder (RunArtifacts) is selected by bench.ensemble's --runs and --models, as
    bench.artifacts.find_runs selects (a run name or a run/model label; a model folder's name), where a model name
    also takes each of its replicas and a set name (`run/model`) every replica of the set."""
    name = set_name(art.dir, art.meta)
    model = (art.meta.get("replica") or {}).get("of") if name else None
    if runs and art.dir.parent.name not in runs and art.label not in runs and name not in runs:
        return False
    return not models or art.dir.name in models or model in models


def selected_sets(arts: list, runs: list[str] | None, models: list[str] | None) -> list[str]:
    """One line per name of --runs / --models that took replicas: which, so that a command says so."""
    lines = []
    for flag, names in (("--models", models), ("--runs", runs)):
        for given in names or ():
            took = [a for a in arts if set_name(a.dir, a.meta) and
                    (given == (a.meta["replica"]["of"] if flag == "--models" else set_name(a.dir, a.meta))
                     or (flag == "--runs" and given == a.dir.parent.name))]
            if took:
                seeds = ",".join(str(seed_of(a.meta)) for a in took)
                lines.append(f"{flag} {given}: takes {len(took)} replica(s) as members, "
                             f"{', '.join(a.label for a in took)} (seeds {seeds})")
    return lines
