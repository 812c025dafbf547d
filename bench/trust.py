"""Re-save a checkpoint the safe loader refused, once, because you trust it: ONLY for a file you made yourself.

    python -m bench.trust runs/default/resnet18/best.pt [more files]

Every reader of the suite loads checkpoints with PyTorch's restricted unpickler (tensors and plain values only) and
refuses a file that needs more, since unpickling arbitrary objects can run code (bench/checkpoints.py). A checkpoint
that your own older tools wrote with extra Python objects in it is refused the same way. This command loads each file
with the FULL unpickler, which runs whatever code the file holds, and writes it back holding only tensors and plain
values; a finished run's digest of that file in run.json is updated to the new file (only that file's). Never use it on a file from someone else:
ask them for the run folder written by this version, or a `.safetensors` export (bench.export --format safetensors),
which cannot hold code.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.trust", description=__doc__.split("\n\n")[0],
                                epilog="Loading with the full unpickler runs any code in the file: use it only on "
                                       "files you made yourself.")
    p.add_argument("files", nargs="+", metavar="FILE", help="checkpoint files (.pt) to re-save in the safe form")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    from bench.artifacts import RECORDED, ArtifactError, digest, read_run, write_json
    from bench.checkpoints import UnsafeCheckpoint, load, trust_and_resave
    for f in map(Path, a.files):
        if not f.is_file():
            print(f"error: {f}: no such file", file=sys.stderr)
            raise SystemExit(2)
        try:
            load(f, check=False)
            print(f"{f}: already safe to load; left as it is")
            continue
        except UnsafeCheckpoint:
            pass
        try:
            names = trust_and_resave(f)
        except (ArtifactError, OSError, RuntimeError) as e:
            print(f"error: {f}: {e}", file=sys.stderr)
            raise SystemExit(2)
        print(f"{f}: re-saved with tensors and plain values only (it needed {', '.join(names) or 'nothing named'})")
        if f.name in RECORDED and (f.parent / "run.json").exists():
            run = read_run(f.parent)
            if isinstance(run.meta.get("files"), dict) and f.name in run.meta["files"]:
                run.meta["files"][f.name] = digest(f)  # this file's only: the others keep their own checks
                write_json(run.meta, f.parent / "run.json")
                print(f"  {f.parent / 'run.json'}: {f.name}'s digest recorded again")
    return 0


if __name__ == "__main__":
    main()
