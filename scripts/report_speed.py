"""How long a leaderboard build takes at N entries, cold and after one new run (issue #42 item 4).

    python scripts/report_speed.py --entries 12,50 [--images 1000] [--out /tmp/report-speed]

Makes N finished model runs with seeded random val probabilities of the FashionDataset's shape (6 attributes, 26
classes, `--images` val images; no training: the report reads only run.json and probs_val.npz), builds the report
cold, rebuilds it unchanged, then adds one run and rebuilds, printing the seconds of each build.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.artifacts import save_probs, write_run  # noqa: E402
from bench.data.dataset import DEFAULT_CLASS_NAMES  # noqa: E402
from bench.reporting.leaderboard import build_report  # noqa: E402

K = tuple(len(c) for c in DEFAULT_CLASS_NAMES)


def fake_run(runs: Path, i: int, labels: np.ndarray, rng) -> None:
    d = runs / f"r{i:03d}" / "resnet18"
    d.mkdir(parents=True)
    strength = 1.0 + 0.02 * i
    blocks = []
    for a, k in enumerate(K):
        z = rng.normal(size=(len(labels), k)) + strength * np.eye(k)[labels[:, a]]
        blocks.append(np.exp(z) / np.exp(z).sum(1, keepdims=True))
    p = np.concatenate(blocks, 1).astype(np.float32)
    save_probs(d / "probs_val.npz", plain=p, flip=p, labels=labels)
    counts = [np.bincount(labels[:, a], minlength=k).tolist() for a, k in enumerate(K)]
    write_run({"name": "resnet18", "kind": "model", "status": "done", "num_classes": list(K),
               "config": {"model": "resnet18", "size": 32, "seed": i, "dataset": "fp",
                          "recipe": {"select": "last", "epochs": 1}},
               "class_names": [list(c) for c in DEFAULT_CLASS_NAMES], "train_class_counts": counts,
               "params": 11e6, "gflops": 1.8, "train_time_s": 10.0, "img_per_s": 50.0, "device": "CPU (2 cores)",
               "data_root": "/nowhere", "data_layout": {"layout": "fashion"}}, d)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--entries", default="12,50")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--out", default="/tmp/report-speed")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    labels = np.stack([rng.integers(0, k, a.images) for k in K], 1)
    for n in map(int, a.entries.split(",")):
        base = Path(a.out) / f"n{n}"
        shutil.rmtree(base, ignore_errors=True)
        runs = base / "runs"
        for i in range(n):
            fake_run(runs, i, labels, np.random.default_rng(i))
        times = {}
        for what in ("cold", "unchanged"):
            t0 = time.perf_counter()
            build_report(runs, base / "rep", quiet=True)
            times[what] = time.perf_counter() - t0
        fake_run(runs, n, labels, np.random.default_rng(n))
        t0 = time.perf_counter()
        build_report(runs, base / "rep", quiet=True)
        times["one new run"] = time.perf_counter() - t0
        print(f"{n} entries, {a.images} val images: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()),
              flush=True)


if __name__ == "__main__":
    main()
