"""Run artifacts on disk: the contract between training and every later stage.

runs/<run>/<model>/
  run.json          config, dataset fingerprint, init, params, GFLOPs, device, times, throughput, best metrics, status
  last.pt           full training state after the last completed epoch (resume)
  best.pt           weights of the selected epoch
  history.csv       one row per epoch
  curves.png        loss and accuracy per epoch
  probs_val.npz     `plain` and `flip` (N, 26) softmax probabilities, and `labels` (N, 6)
  probs_test.npz    `plain` and `flip` for the test split
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class ArtifactError(RuntimeError):
    pass


@dataclass
class RunArtifacts:
    dir: Path
    meta: dict

    @property
    def label(self) -> str:
        """`run/model`, the name a member has on leaderboards."""
        return f"{self.dir.parent.name}/{self.dir.name}"

    @property
    def done(self) -> bool:
        return self.meta.get("status") == "done"

    def probs_path(self, split: str) -> Path:
        return self.dir / f"probs_{split}.npz"

    def has_probs(self, split: str) -> bool:
        return self.probs_path(split).exists()

    def load_probs(self, split: str) -> dict[str, np.ndarray]:
        path = self.probs_path(split)
        if not path.exists():
            raise ArtifactError(f"{path}: missing; re-run training or `python -m bench.ensemble` recomputes it "
                                f"from {self.dir / 'best.pt'}")
        with np.load(path) as z:
            return {k: z[k] for k in z.files}


def read_run(model_dir: Path) -> RunArtifacts:
    path = Path(model_dir) / "run.json"
    try:
        return RunArtifacts(Path(model_dir), json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: unreadable run metadata ({e})") from e


def find_runs(root: str | Path = "runs", runs: list[str] | None = None, models: list[str] | None = None,
              done_only: bool = False) -> list[RunArtifacts]:
    """Every runs/<run>/<model>/run.json, optionally filtered by run and model names."""
    root = Path(root)
    found = []
    for path in sorted(root.glob("*/*/run.json")):
        art = read_run(path.parent)
        if runs and art.dir.parent.name not in runs and art.label not in runs:
            continue
        if models and art.dir.name not in models:
            continue
        if done_only and not art.done:
            continue
        found.append(art)
    return found


def write_json(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def save_probs(path: Path, **arrays) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
