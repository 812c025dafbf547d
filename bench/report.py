"""Leaderboard report rebuilt from run artifacts alone (no retraining); same artifacts, same report.

    python -m bench.report [--workdir PATH] [--runs-dir RUNS] [--out DIR] [--metric overall|class] [--sort KEY]
                           [--dataset FINGERPRINT] [--gallery ENTRY]

A report belongs to its runs folder: by default a folder named `runs` reports to `reports/` beside it
(WORKDIR/runs -> WORKDIR/reports), any other RUNS to RUNS/_report/, so training elsewhere never overwrites another
leaderboard. Writes OUT/leaderboard.md (it opens with a one-sentence verdict and a summary table; every column, the
comparisons and the method follow), its CSV twin OUT/leaderboard.csv (every column), and figures in
OUT/leaderboard_files/, among them galleries of the leader's most confident mistakes on val (and of ENTRY's with
--gallery). An ensemble entry whose members were retrained or removed since it was written is listed, not ranked.
A model's replicas (bench.run --seeds) are one row, compared over seeds and images; replicas that differ in more
than the seed are refused (exit 2, nothing written). With nothing to rank it says so on stderr and exits 1. The
library is bench/reporting/; this module parses arguments.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench import workdir
from bench.metrics import TARGET_HELP, TARGETS
from bench.reporting.leaderboard import SORT_KEYS, build_report


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    workdir.add_argument(p)
    p.add_argument("--runs-dir", help="runs folder (default WORKDIR/runs)")
    p.add_argument("--out", help="report folder (default: reports/ beside a folder named runs, else RUNS_DIR/_report)")
    p.add_argument("--metric", choices=list(TARGETS),
                   help=TARGET_HELP + "; the default sort, the leader and the comparisons with it (default: the one "
                        "a command last named for this report folder, else overall; bench.run, tune and ensemble "
                        "keep it too)")
    p.add_argument("--sort", choices=SORT_KEYS, help="reorder rows by another column (default: the --metric)")
    p.add_argument("--dataset", help="dataset fingerprint to report (default: the one with most runs)")
    p.add_argument("--gallery", metavar="ENTRY",
                   help="also draw ENTRY's galleries (a leaderboard entry: run/model or _ensembles/NAME): its most "
                        "confident wrong predictions per attribute and the rarest classes' images, on the dataset's "
                        "original photos; the leader's are always drawn")
    a = p.parse_args(argv)
    runs_dir = Path(a.runs_dir) if a.runs_dir else workdir.resolve(a.workdir).runs
    try:
        path = build_report(runs_dir, a.out, a.sort, a.dataset, metric=a.metric, gallery=a.gallery)
    except ValueError as e:  # --gallery naming no entry, replicas differing in more than the seed (ReplicaError), a
        #                      linked report folder (ReportFolderError): all found before anything is written
        p.error(str(e))
    if path is None:  # build_report said why on stderr
        raise SystemExit(1)
    return path


if __name__ == "__main__":
    main()
