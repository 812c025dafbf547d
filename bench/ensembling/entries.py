"""Reading an ensemble entry (RUNS/_ensembles/NAME/run.json, written by make_ensemble) back as the models it was
fitted for: its members' run folders, checked to be the weights the entry's weights and decision rule were fitted
with. Shared by every later stage that runs an entry's members on new images (bench.predict, bench.export).

An entry records each member's checkpoint identity (`member_identity`: path, size and modification time of the
weights of each split, and the run's finish time). A member retrained since (`bench.run --force`, a new --refit) no
longer matches. Entries written before identities were recorded are checked by time: a member that finished after
the entry was created was retrained.
"""
from __future__ import annotations

import json
from pathlib import Path

from bench.artifacts import ArtifactError, RunArtifacts, inside, read_run
from bench.ensembling.ensemble import EnsembleError, member_identity


def entry_dir(runs_dir: Path, name: str) -> Path:
    return Path(runs_dir) / "_ensembles" / name


def read_entry(runs_dir: Path, name: str) -> tuple[dict, list[RunArtifacts]]:
    """(the entry's run.json, its members' run folders in the entry's order); EnsembleError naming what is wrong:
    no such entry (listing the ones there are), an unreadable one, a member gone, or a member retrained since."""
    path = entry_dir(runs_dir, name) / "run.json"
    if not path.exists():
        there = sorted(p.parent.name for p in (Path(runs_dir) / "_ensembles").glob("*/run.json"))
        raise EnsembleError(f"no ensemble entry {path.parent}; entries in {runs_dir}: {', '.join(there) or 'none'} "
                            f"(python -m bench.ensemble --name NAME makes one)")
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EnsembleError(f"{path}: unreadable ensemble entry ({e})") from e
    members = []
    for label in entry.get("members", []):
        try:
            folder = inside(runs_dir, label, "members", path)
        except ArtifactError as e:  # a member label leading out of the runs folder
            raise EnsembleError(str(e)) from e
        try:
            members.append(read_run(folder))
        except ArtifactError as e:
            raise EnsembleError(f"ensemble {name}: member {label} of {path} is gone ({e}); rebuild the entry with "
                                f"python -m bench.ensemble --name {name} --force") from e
    changed = retrained_members(entry, members)
    if changed:
        raise EnsembleError(f"ensemble {name}: member(s) retrained after {path} was written: {'; '.join(changed)}. "
                            f"The entry's weights and decision rule were fitted for the old models; rebuild it: "
                            f"python -m bench.ensemble --name {name} --force (with the options it was made with)")
    return entry, members


def retrained_members(entry: dict, members: list[RunArtifacts]) -> list[str]:
    """Each member whose weights are not the ones the entry recorded, with what was recorded and what is there now
    (by time for entries older than the recorded identities)."""
    recorded, created = entry.get("member_identity"), entry.get("created")
    changed = []
    for m in members:
        if recorded is not None:
            was, now = recorded.get(m.label), member_identity(m)
            if was is None or was != now:
                changed.append(f"{m.label} (recorded {was}, now {now})")
        elif created and (m.meta.get("finished") or "") > created:  # same "%Y-%m-%d %H:%M:%S" format
            changed.append(f"{m.label} (finished {m.meta.get('finished')}, after the entry's {created})")
    return changed
