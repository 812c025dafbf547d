"""One working folder for all state: runs/, studies/, reports/, submission/.

Default: the current directory; `--workdir PATH` or `$FASHION_BENCH_HOME` moves it (the flag wins). Every command
prints where it writes. Caches are not state: decoded images and the demo dataset stay under ~/.cache/fashion-bench
($FASHION_BENCH_CACHE). Nothing is ever written inside the installed package.

    WORKDIR/runs/<run>/<model>/       bench.run artifacts (run.json, checkpoints, probabilities)
    WORKDIR/runs/_ensembles/<name>/   bench.ensemble entries
    WORKDIR/studies/fashion.db        bench.tune's default study storage (SQLite)
    WORKDIR/studies/trials/<study>/   per-trial run.json and history.csv
    WORKDIR/reports/                  leaderboard, tune reports, speed tables
    WORKDIR/submission/               prediction.txt and prediction.zip
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

ENV = "FASHION_BENCH_HOME"


@dataclass(frozen=True)
class Workdir:
    root: Path

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def studies(self) -> Path:
        return self.root / "studies"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def submission(self) -> Path:
        return self.root / "submission"


def resolve(arg: str | Path | None = None) -> Workdir:
    """--workdir, else $FASHION_BENCH_HOME, else the current directory (relative paths stay relative, so printed
    paths read as the user typed them)."""
    return Workdir(Path(arg or os.environ.get(ENV) or "."))


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", metavar="PATH",
                        help=f"working folder holding runs/, studies/, reports/, submission/ (default ${ENV}, "
                             "else the current directory)")
