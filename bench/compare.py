"""One ranking of models across datasets: one Markdown page from several working folders' runs.

    python -m bench.compare FOLDER FOLDER [FOLDER ...] [--metric overall|class] [--out DIR]

Each FOLDER is a working folder (its runs/) or a runs folder, on its own dataset (named on the page by its folder
and fingerprint). Writes OUT/compare.md (default WORKDIR/reports/compare.md): a model x dataset table of the target
metric with intervals, each model's average rank over the models present on every dataset, and with 3 or more
datasets a Friedman test and a critical-difference diagram (OUT/compare_files/cd.png, scikit-posthocs: pip install
-e '.[compare]'). Models match by name, recipe and image size. Refuses (exit 2, nothing written) fewer than two
folders, two folders of one dataset, and folders with no model in common. The library is bench/reporting/compare.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import workdir
from bench.metrics import TARGET_HELP, TARGETS


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="*", metavar="FOLDER",
                   help="working folders (or runs folders), one per dataset; two or more")
    p.add_argument("--metric", choices=list(TARGETS), default="overall",
                   help=TARGET_HELP + "; what the models are ranked on (default overall)")
    p.add_argument("--out", help="folder for compare.md and compare_files/ (default WORKDIR/reports)")
    workdir.add_argument(p)
    a = p.parse_args(argv)
    from bench.reporting.compare import CompareError, build_compare
    out = Path(a.out) if a.out else workdir.resolve(a.workdir).reports
    try:
        return build_compare(a.folders, out, a.metric)
    except ValueError as e:  # CompareError, or replicas that differ in more than the seed (ReplicaError)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
