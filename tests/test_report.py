import json
import shutil

import numpy as np
import pandas as pd
import pytest

from bench.report import build_report
from bench.report_plots import pareto_front


def test_report_renders_every_section_and_matches_artifacts(demo_runs, tmp_path):
    path = build_report(demo_runs, tmp_path / "rep", quiet=True)
    md = path.read_text()
    for section in ("## Leaderboard", "## Is the difference real?", "## Accuracy vs cost", "## Training curves",
                    "## Class distribution and loss weights", "## Per-class accuracy", "## Confusion matrices"):
        assert section in md
    for img in ("pareto.png", "curves.png", "class_distribution.png", "confusion-default-resnet18.png"):
        assert (tmp_path / "rep/leaderboard_files" / img).stat().st_size > 1000
        assert f"leaderboard_files/{img}" in md
    df = pd.read_csv(tmp_path / "rep/leaderboard.csv")
    assert set(df["entry"]) == {"default/resnet18", "b/resnet18", "majority baseline"}
    assert df["overall_acc"].is_monotonic_decreasing
    for label in ("default/resnet18", "b/resnet18"):
        meta = json.loads((demo_runs / label / "run.json").read_text())
        row = df[df["entry"] == label].iloc[0]
        assert row["overall_acc"] == pytest.approx(meta["val"]["overall_acc"], abs=1e-6)
        assert row["mean_class_acc"] == pytest.approx(meta["val"]["mean_class_acc"], abs=1e-6)
        assert row["texture"] == pytest.approx(meta["val"]["attr_acc"]["texture"], abs=1e-6)
        assert row["params_M"] == pytest.approx(meta["params"] / 1e6, abs=0.01)
        assert row["ci_lo"] <= row["overall_acc"] <= row["ci_hi"]
        assert row["init"] == "scratch"
    labels = np.load(demo_runs / "default/resnet18/probs_val.npz")["labels"]
    base = df[df["entry"] == "majority baseline"].iloc[0]
    counts = json.loads((demo_runs / "default/resnet18/run.json").read_text())["train_class_counts"]
    majority = np.array([int(np.argmax(c)) for c in counts])
    assert base["overall_acc"] == pytest.approx((labels == majority).mean())


def test_same_artifacts_same_report(demo_runs, tmp_path):
    a = build_report(demo_runs, tmp_path / "a", quiet=True).read_text()
    b = build_report(demo_runs, tmp_path / "b", quiet=True).read_text()
    assert a == b
    assert (tmp_path / "a/leaderboard.csv").read_text() == (tmp_path / "b/leaderboard.csv").read_text()


def test_partial_runs_are_listed_not_ranked(demo_runs, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(demo_runs, runs)
    meta_path = runs / "b/resnet18/run.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "status": "training"}))
    (runs / "default/resnet18/probs_val.npz").unlink()
    md = build_report(runs, tmp_path / "rep", quiet=True).read_text()
    assert "## Not on the leaderboard" in md
    assert "`b/resnet18`: still training (2/2 epochs done)" in md
    assert "`default/resnet18`: no val probabilities" in md
    assert "No finished runs" in md


def test_pareto_front():
    cost = np.array([1.0, 2.0, 3.0, 4.0])
    acc = np.array([0.5, 0.4, 0.7, 0.6])
    assert pareto_front(cost, acc).tolist() == [0, 2]
