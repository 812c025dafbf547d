"""Any number of attributes and classes: nothing assumes the FashionDataset's six attributes and 26 classes."""
import json

import numpy as np
import pandas as pd
import pytest

from bench.data import ATTRIBUTES, FashionDataset, Split, attribute_names, attributes_of
from bench.ensemble import main as ensemble_main
from bench.metrics import score
from bench.reporting.leaderboard import build_report

SCHEMA = {"colour": ("red", "blue"), "category": ("shirt", "dress", "coat", "skirt", "hat"),
          "season": tuple(f"s{i}" for i in range(11))}
NC = tuple(len(c) for c in SCHEMA.values())


def fake_run(runs, run, rng, labels, test_n=7, acc=0.7):
    """A finished model run on a 3-attribute schema: run.json and probabilities right on about `acc` of cells."""
    d = runs / run / "resnet18"
    d.mkdir(parents=True)

    def probs(n, truth=None):
        blocks = []
        for a, k in enumerate(NC):
            p = rng.dirichlet(np.ones(k), n)
            if truth is not None:
                hit = rng.random(n) < acc
                p[hit, truth[hit, a]] += 2
            blocks.append(p / p.sum(1, keepdims=True))
        return np.concatenate(blocks, 1)
    np.savez(d / "probs_val.npz", plain=probs(len(labels), labels), flip=probs(len(labels), labels), labels=labels)
    np.savez(d / "probs_test.npz", plain=probs(test_n), flip=probs(test_n))
    counts = [np.bincount(labels[:, a], minlength=k).tolist() for a, k in enumerate(NC)]
    meta = {"name": "resnet18", "status": "done", "kind": "model", "config": {"dataset": "fp3", "recipe": {}},
            "num_classes": list(NC), "attributes": list(SCHEMA), "class_names": [list(c) for c in SCHEMA.values()],
            "train_class_counts": counts, "params": 1e6, "gflops": 0.1, "train_time_s": 1.0, "data_root": "/nowhere"}
    (d / "run.json").write_text(json.dumps(meta))


def labels_for(rng, n):
    return np.stack([rng.integers(0, k, n) for k in NC], 1)


def test_attribute_names_come_from_the_data_or_fall_back_to_the_six():
    assert attribute_names((7, 3, 3, 4, 6, 3)) == ATTRIBUTES  # run.json files written before names were recorded
    assert attributes_of({"num_classes": [2, 5, 11], "attributes": ["a", "b", "c"]}) == ("a", "b", "c")
    assert attribute_names((2, 3)) == ("attribute_1", "attribute_2")
    with pytest.raises(ValueError):
        attribute_names((2, 3), ("only_one",))
    ds = FashionDataset("root", tuple(SCHEMA.values()), {}, tuple(SCHEMA))
    assert ds.attributes == tuple(SCHEMA) and ds.num_classes == NC
    y = np.array([[0, 1, 10], [1, 4, 0]])
    s = score(y, np.array([[0, 1, 0], [1, 0, 0]]), NC, tuple(SCHEMA))
    assert s["attr_acc"] == {"colour": 1.0, "category": 0.5, "season": 0.5}
    assert s["overall_acc"] == pytest.approx(4 / 6)
    assert len(s["class_acc"]) == 3 and len(s["class_acc"][2]) == 11


def test_three_attribute_runs_ensemble_and_report_with_their_own_names(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = labels_for(rng, 60)
    runs = tmp_path / "runs"
    fake_run(runs, "a", rng, labels)
    fake_run(runs, "b", rng, labels, acc=0.5)
    result = ensemble_main(["--runs-dir", str(runs), "--out", str(tmp_path / "sub"), "--no-report",
                            "--decision", "logit_adjusted", "--tta", "plain"])
    out = capsys.readouterr().out
    assert result["attributes"] == list(SCHEMA) and set(result["val"]["attr_acc"]) == set(SCHEMA)
    assert "colour" in out and "texture" not in out  # the fitted tau are named by the data's attributes
    lines = (tmp_path / "sub/prediction.txt").read_text().splitlines()
    assert len(lines) == 7 and all(len(line.split()) == 3 for line in lines)
    path = build_report(runs, tmp_path / "rep", quiet=True)
    md = path.read_text()
    df = pd.read_csv(tmp_path / "rep/leaderboard.csv")
    for name in SCHEMA:
        assert name in df.columns and f"| {name} |" in md
    assert "texture" not in df.columns and "texture" not in md
    assert "(N x 3)" in md and "each of the 18 classes" in md and "26" not in md.split("## Leaderboard")[0]
    row = df[df["entry"] == "a/resnet18"].iloc[0]
    pred = np.stack([b.argmax(1) for b in np.split(np.load(runs / "a/resnet18/probs_val.npz")["plain"],
                                                    np.cumsum(NC)[:-1], 1)], 1)
    assert row["season"] == pytest.approx((pred[:, 2] == labels[:, 2]).mean(), abs=1e-6)
    assert "| season | s10 |" in md  # the per-class table
    assert (tmp_path / "rep/leaderboard_files/confusion-a-resnet18.png").exists()
    assert (tmp_path / "rep/leaderboard_files/class_distribution.png").exists()
