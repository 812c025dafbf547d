"""Any number of attributes and classes: nothing assumes the FashionDataset's six attributes and 26 classes."""
import json
import re

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
    # the FashionDataset's 26 classes appear nowhere above the tables (0.267 is a score, not a 26)
    head = md.split("## Leaderboard")[0]
    assert "(N x 3)" in md and "each of the 18 classes" in md and not re.search(r"\b26\b", head)
    row = df[df["entry"] == "a/resnet18"].iloc[0]
    pred = np.stack([b.argmax(1) for b in np.split(np.load(runs / "a/resnet18/probs_val.npz")["plain"],
                                                    np.cumsum(NC)[:-1], 1)], 1)
    assert row["season"] == pytest.approx((pred[:, 2] == labels[:, 2]).mean(), abs=1e-6)
    assert "| season | s10 |" in md  # the per-class table
    assert (tmp_path / "rep/leaderboard_files/confusion-a-resnet18.png").exists()
    assert (tmp_path / "rep/leaderboard_files/class_distribution.png").exists()


# Missing labels (-1): four images, three attributes of 2, 2 and 3 classes, 3 of the 12 cells missing.
Y = np.array([[0, 1, -1], [1, -1, 2], [1, 0, 2], [-1, 0, 0]])
P = np.array([[0, 0, 1], [1, 1, 2], [0, 0, 1], [1, 0, 1]])
K3 = (2, 2, 3)


def test_metrics_count_labelled_cells_only_by_hand():
    s = score(Y, P, K3, ("a", "b", "c"))
    # correct labelled cells: image 0: a; image 1: a, c; image 2: b; image 3: b -> 5 of 9 labelled
    assert s["overall_acc"] == pytest.approx(5 / 9) and s["missing"] == 3 and s["n"] == 4
    # a over images 0-2 (right, right, wrong); b over 0, 2, 3 (wrong, right, right); c over 1-3 (right, wrong, wrong)
    assert s["attr_acc"] == pytest.approx({"a": 2 / 3, "b": 2 / 3, "c": 1 / 3})
    # recall of each class with labelled images: a0 1/1, a1 1/2, b0 2/2, b1 0/1, c0 0/1, c2 1/2 (c1 has none)
    assert s["class_acc"][2][1] is None
    assert s["class_avg_acc"] == pytest.approx((1 + 0.5 + 1 + 0 + 0 + 0.5) / 6)
    assert s["mean_class_acc"] == pytest.approx(((1 + .5) / 2 + (1 + 0) / 2 + (0 + .5) / 2) / 3)
    from bench.metrics import attribute_gain, format_score, majority_from_counts
    assert "3 missing labels" in format_score(s)
    assert attribute_gain(Y[:, 2], P[:, 2], 3, "overall") == pytest.approx(1 / 4)  # right labelled cells / images
    assert attribute_gain(Y[:, 2], P[:, 2], 3, "class") == pytest.approx(0 + 0.5)
    from bench.data import class_counts
    counts = class_counts(Y, K3)
    assert [c.tolist() for c in counts] == [[1, 2], [2, 1], [1, 0, 2]]
    assert majority_from_counts(counts, 2).tolist() == [[1, 0, 2]] * 2


def test_per_image_parts_stay_exact_with_missing_labels():
    from bench.metrics import image_parts
    from bench.stats import image_diff
    num, den = image_parts(Y, P == Y, K3, "overall")
    assert num[:, 0].tolist() == [1, 2, 1, 1] and den[:, 0].tolist() == [2, 2, 3, 2]
    num, den = image_parts(Y, P == Y, K3, "class")
    present = den.sum(0) > 0
    assert present.sum() == 6 and np.mean(num.sum(0)[present] / den.sum(0)[present]) == pytest.approx(0.5)
    perfect = np.where(Y >= 0, Y, 0)
    for metric, key in (("overall", "overall_acc"), ("class", "class_avg_acc")):
        a, d = image_parts(Y, P == Y, K3, metric)
        b, _ = image_parts(Y, perfect == Y, K3, metric)
        want = score(Y, P, K3)[key] - score(Y, perfect, K3)[key]
        assert image_diff(a, b, d).sum() == pytest.approx(want)  # the shares sum to the difference


def test_loss_masks_missing_labels_per_head():
    import torch

    from bench.training.losses import MultiAttributeLoss
    loss = MultiAttributeLoss([np.array([5, 5]), np.array([5, 5])], label_smoothing=0.1)
    torch.manual_seed(0)
    z = [torch.randn(4, 2, requires_grad=True), torch.randn(4, 2, requires_grad=True)]
    y = torch.tensor([[0, -1], [1, -1], [-1, -1], [1, -1]])  # head 2 has no label in this batch
    per = loss.per_attribute(z, y)
    assert per[1] == 0 and torch.isfinite(per).all()
    rows = torch.tensor([0, 1, 3])
    alone = loss.per_attribute([z[0][rows], z[1][rows]], torch.tensor([[0, 0], [1, 0], [1, 0]]))[0]
    assert float(per[0].detach()) == pytest.approx(float(alone.detach()))  # the mean over the labelled images only
    loss(z, y).backward()
    assert torch.isfinite(z[0].grad).all() and (z[0].grad[2] == 0).all() and (z[1].grad == 0).all()


def test_stratified_folds_ignore_missing_cells():
    from bench.data.folds import stratified_folds
    rng = np.random.default_rng(0)
    y = np.stack([rng.integers(0, k, 200) for k in (2, 5, 11)], 1)
    y[rng.random(y.shape) < 0.2] = -1
    y[:5] = -1  # images with no label at all still get a fold
    fold = stratified_folds(y, 5, seed=0)
    assert sorted(np.bincount(fold).tolist()) == [40] * 5
    for a in range(3):
        for c in np.unique(y[:, a][y[:, a] >= 0]):
            if (y[:, a] == c).sum() >= 5:
                assert len(np.unique(fold[y[:, a] == c])) == 5  # every class with >= k images in every fold
    full = np.where(y >= 0, y, 0)
    assert (stratified_folds(full, 5, 0) == stratified_folds(full, 5, 0)).all()


@pytest.fixture(scope="module")
def csv_root(tmp_path_factory):
    """A 3-attribute CSV-layout demo (2, 5 and 11 classes) with 10% of train/val labels missing."""
    from bench.data.demo import DemoSpec, parse_schema, write_demo
    spec = DemoSpec(seed=0, train=60, val=30, test=10, width=32, height=40,
                    schema=parse_schema("colour:2,category:5,season:11"), missing=0.1)
    return write_demo(tmp_path_factory.mktemp("csv") / "ds", spec)


def snapshot(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


def test_csv_demo_opens_with_its_schema_and_missing_labels(csv_root):
    from bench.data import open_dataset
    before = snapshot(csv_root)
    ds = open_dataset(csv_root)
    assert ds.attributes == ("colour", "category", "season") and ds.num_classes == (2, 5, 11)
    assert ds.class_names[2][10] == "season_10" and ds.layout == {"layout": "csv", "labels": None}
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [60, 30, 10] and ds.splits["test"].labels is None
    lab = np.concatenate([ds.splits["train"].labels, ds.splits["val"].labels])
    assert 0.05 < (lab == -1).mean() < 0.15
    assert snapshot(csv_root) == before  # nothing in ROOT written


def test_csv_layout_reports_every_problem_with_file_line_and_column(csv_root, tmp_path):
    from bench.data import DatasetError, open_dataset
    root = tmp_path / "ds"
    import shutil
    shutil.copytree(csv_root, root)
    lines = (root / "labels.csv").read_text().splitlines()
    lines[2] = lines[2].replace(",train,", ",holdout,")             # unknown split value (line 3, column 2)
    lines[3] = lines[4].split(",")[0] + ",val," + ",".join(lines[3].split(",")[2:])  # image 4 also in val
    lines[5] = lines[5].replace("img/", "img/nope-")                  # a missing image
    lines[6] = "../outside.jpg," + lines[6].split(",", 1)[1]          # a path outside ROOT
    row = lines[61].split(",")                                         # the first val row
    row[4] = "season_99"                                               # a class seen only in val
    lines[61] = ",".join(row)
    lines[7] = lines[7] + ",extra"                                     # too many fields
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    before = snapshot(root)
    with pytest.raises(DatasetError) as e:
        open_dataset(root)
    probs = e.value.problems
    where = str(root / "labels.csv")
    assert any(p.startswith(f"{where}:3:2: unknown split 'holdout'") for p in probs)
    assert any(p.startswith(f"{where}:5:1: ") and "also in split 'val'" in p for p in probs)
    assert any(p.startswith(f"{where}:6:1: ") and "listed but missing" in p for p in probs)
    assert any(p.startswith(f"{where}:7:1: ") and "inside it" in p for p in probs)
    assert any(p.startswith(f"{where}:8: expected 5 fields") for p in probs)
    assert any(p.startswith(f"{where}:62:5: class 'season_99'") and "never in train" in p for p in probs)
    assert snapshot(root) == before
    # a constant attribute column and a duplicate path within one split
    (root / "labels.csv").write_text("image,split,colour,one\nimg/00000.jpg,train,a,x\nimg/00001.jpg,train,b,x\n"
                                     "img/00001.jpg,train,b,x\nimg/00002.jpg,val,a,x\n")
    with pytest.raises(DatasetError) as e:
        open_dataset(root)
    assert any(p.startswith(f"{where}:1:4: attribute 'one' has one class only") for p in e.value.problems)
    assert any(p.startswith(f"{where}:4:1: ") and "listed twice" in p for p in e.value.problems)


def test_csv_without_split_column_carves_a_stratified_val_split(csv_root, tmp_path):
    import shutil

    from bench.data import open_dataset
    root = tmp_path / "ds"
    shutil.copytree(csv_root, root)
    rows = [line.split(",") for line in (root / "labels.csv").read_text().splitlines()]
    (root / "labels.csv").write_text("\n".join(",".join([r[0], *r[2:]]) for r in rows if r[1] != "test") + "\n")
    ds = open_dataset(root, val_fraction=0.25, split_seed=3)
    assert len(ds.splits["val"]) in (22, 23) and len(ds.splits["train"]) + len(ds.splits["val"]) == 90
    assert ds.layout["val_fraction"] == 0.25 and ds.layout["split_seed"] == 3
    again = open_dataset(root, val_fraction=0.25, split_seed=3)
    assert again.splits["val"].paths == ds.splits["val"].paths and again.fingerprint() == ds.fingerprint()


def test_run_ensemble_report_on_a_three_attribute_csv_dataset_with_missing_labels(csv_root, tmp_path, capsys):
    from bench.run import main as run_main
    runs = tmp_path / "runs"
    common = ["--data", str(csv_root), "--out", str(runs), "--size", "32", "--epochs", "1", "--batch-size", "16",
              "--pretrained", "none", "--no-progress", "--no-report"]
    run_main(["--models", "resnet18", *common])
    run_main(["--models", "resnet18", "--run", "b", "--seed", "1", *common])
    meta = json.loads((runs / "default/resnet18/run.json").read_text())
    assert meta["attributes"] == ["colour", "category", "season"] and meta["num_classes"] == [2, 5, 11]
    assert meta["data_layout"]["layout"] == "csv" and meta["val"]["missing"] > 0
    result = ensemble_main(["--runs-dir", str(runs), "--out", str(tmp_path / "sub"), "--no-report",
                            "--tta", "plain,crop0.9"])  # crop0.9 is recomputed from best.pt: the dataset reopens
    assert result["attributes"] == meta["attributes"]
    pred = (tmp_path / "sub/prediction.csv").read_text().splitlines()
    # the one prediction CSV format (bench.predict's too): image, then per attribute its class and probability
    assert pred[0] == "image,colour,colour_prob,category,category_prob,season,season_prob" and len(pred) == 11
    assert pred[1].split(",")[0] == "img/00090.jpg" and pred[1].split(",")[5].startswith("season_")
    assert not (tmp_path / "sub/prediction.txt").exists()
    # the demo's hidden/README.txt command scores it, and gives the ensemble's own demo test score
    command = next(line.split() for line in (csv_root / "hidden/README.txt").read_text().splitlines()
                   if line.strip().startswith("python -m bench.score"))
    args = [str(tmp_path / "sub/prediction.csv") if w == "PREDICTION.csv" else w.replace("ROOT", str(csv_root))
            for w in command[3:]]
    from bench.score import main as score_main
    assert score_main(args) == result["demo_test"]
    md = build_report(runs, tmp_path / "rep", quiet=True).read_text()
    assert "| colour | category | season |" in md and "texture" not in md
    # every column of the leaderboard CSV is an attribute's or one bench/data/columns.py knows (the names it
    # refuses attributes by, when a dataset is read)
    from bench.data.columns import LEADERBOARD_COLUMNS
    columns = set(pd.read_csv(tmp_path / "rep/leaderboard.csv").columns)
    assert columns - set(meta["attributes"]) <= LEADERBOARD_COLUMNS
    missing = int((np.load(runs / "default/resnet18/probs_val.npz")["labels"] == -1).sum())
    assert missing > 0 and f"Missing labels: {missing} of the 90 (image, attribute) cells" in md


def test_a_label_file_given_with_labels_is_recorded_and_reopens(csv_root, tmp_path):
    import shutil

    from bench.data import open_dataset, reopen_args
    other = tmp_path / "elsewhere.csv"
    shutil.copy(csv_root / "labels.csv", other)
    ds = open_dataset(csv_root, labels=other)
    assert ds.layout == {"layout": "csv", "labels": str(other.resolve())}
    again = open_dataset(csv_root, check_images=False, **reopen_args(ds.layout))
    assert again.fingerprint() == ds.fingerprint() == open_dataset(csv_root).fingerprint()
    assert reopen_args({"layout": "fashion"}) == {} == reopen_args(None)  # older run.json files: no layout


def test_score_reads_a_csv_datasets_prediction_csv(csv_root, tmp_path, capsys):
    from bench.data import format_prediction_csv, open_dataset
    from bench.score import main as score_main
    ds = open_dataset(csv_root, check_images=False)
    val = ds.splits["val"]
    guess = np.where(val.labels >= 0, val.labels, 0)
    guess[:3, 2] = (guess[:3, 2] + 1) % 11  # three season cells wrong (all labelled? count them)
    wrong = int((val.labels[:3, 2] >= 0).sum())
    order = np.arange(len(val))[::-1]  # any row order: rows are matched by image path
    (tmp_path / "p.csv").write_text(format_prediction_csv([val.paths[i] for i in order], guess[order],
                                                          ds.attributes, ds.class_names))
    s = score_main([str(tmp_path / "p.csv"), "--data", str(csv_root), "--split", "val"])
    labelled = int((val.labels >= 0).sum())
    assert s["overall_acc"] == pytest.approx((labelled - wrong) / labelled)
    assert s["missing"] == val.labels.size - labelled
    assert "season" in capsys.readouterr().out


def _csv_dataset(root, header, rows):
    """A CSV-layout dataset at `root`: labels.csv with `header` and `rows` (image paths first), tiny images."""
    from PIL import Image
    (root / "img").mkdir(parents=True)
    for r in rows:
        Image.new("RGB", (4, 4), (99, 99, 99)).save(root / r[0])
    (root / "labels.csv").write_text(",".join(header) + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return root


def test_attribute_names_that_would_share_a_written_column_are_refused_when_the_dataset_is_read(tmp_path):
    """Attributes `n` and `acc_n`: the leaderboard names n's accuracy column acc_n (n is its image count), so the
    CSV kept one acc_n and lost the other; `colour` and `colour_prob` clash in the prediction CSV. Both are refused
    by the dataset reader, with file:line:column, before any training."""
    from bench.data import DatasetError, leaderboard_attribute_columns, open_dataset
    rows = [("img/a.jpg", "train", "x", "p", "red", "lo"), ("img/b.jpg", "train", "y", "q", "blue", "hi"),
            ("img/c.jpg", "val", "x", "q", "red", "hi")]
    root = _csv_dataset(tmp_path / "ds", ["image", "split", "n", "acc_n", "colour", "colour_prob"], rows)
    with pytest.raises(DatasetError) as e:
        open_dataset(root)
    where = root / "labels.csv"
    assert [p.split(": the ")[0] for p in e.value.problems] == [f"{where}:1:4: attribute 'acc_n'",
                                                                 f"{where}:1:6: attribute 'colour_prob'"]
    assert "leaderboard CSV would have two columns named acc_n" in e.value.problems[0]
    assert "prediction CSV (bench.predict --probs, prediction.csv) would have two columns named colour_prob" \
           in e.value.problems[1]
    # `n` alone is fine (its column is acc_n); a class column `colour=red` clashes only when colour has a class red
    (root / "labels.csv").write_text("image,split,n,colour,colour=red\n" + "".join(
        f"{r[0]},{r[1]},{r[2]},{r[4]},{r[3]}\n" for r in rows))
    with pytest.raises(DatasetError) as e:
        open_dataset(root)
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith(f"{where}:1:5: attribute 'colour=red'")
    assert leaderboard_attribute_columns(("n", "colour"), {"n": 0, "rank": 1}) == {"n": "acc_n", "colour": "colour"}
    with pytest.raises(ValueError, match="more than one column named acc_n"):  # a run made before the check
        leaderboard_attribute_columns(("n", "acc_n"), {"n": 0})


def test_a_csv_demo_of_101_classes_keeps_its_class_order_and_its_hidden_score(tmp_path):
    """`a_100` sorted before `a_11`: the CSV layout's class order (sorted names) differed from the demo's generation
    order, which its hidden test labels indexed, so the demo's hidden score was wrong from 101 classes on."""
    from bench.data import open_dataset
    from bench.data.demo import DemoSpec, class_names_of, parse_schema, write_demo
    from bench.ensembling.ensemble import write_prediction_csv
    from bench.score import main as score_main
    root = write_demo(tmp_path / "ds", DemoSpec(seed=0, train=110, val=12, test=8, width=8, height=8,
                                                schema=parse_schema("big:101,colour:2")))
    ds = open_dataset(root)
    assert ds.class_names[0] == tuple(class_names_of("big", 101)) and ds.class_names[0][100] == "big_100"
    assert ds.splits["train"].labels[:101, 0].tolist() == list(range(101))  # the demo draws class i for image i
    # a model that is always right on the hidden test labels scores 1.0 with the demo's own command
    truth = [line.split(",") for line in (root / "hidden/test_labels.csv").read_text().splitlines()[1:]]
    assert [t[0] for t in truth] == list(ds.splits["test"].paths)
    right = np.array([[ds.class_names[a].index(c) for a, c in enumerate(t[1:])] for t in truth])
    sub = write_prediction_csv(right, tmp_path / "sub", ds.splits["test"].paths, ds.attributes, ds.class_names)
    assert score_main([str(sub), "--truth", str(root / "hidden/test_labels.csv"), "--data", str(root)])[
        "overall_acc"] == 1.0
    assert score_main([str(sub), "--data", str(root), "--split", "test"])["overall_acc"] == 1.0
