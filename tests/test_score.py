import numpy as np
import pytest

from bench.data import DatasetError
from bench.metrics import majority_prediction, score
from bench.data import read_predictions
from bench.score import main

K = (7, 3, 3, 4, 6, 3)


def test_score_hand_computed():
    y = np.array([[0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 2, 2, 3, 5, 2], [0, 0, 0, 0, 0, 0]])
    p = np.array([[0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1], [1, 2, 2, 3, 5, 2], [0, 0, 0, 0, 0, 1]])
    s = score(y, p, K)
    assert s["overall_acc"] == pytest.approx(22 / 24)
    assert s["attr_acc"]["texture"] == pytest.approx(3 / 4)
    assert s["attr_acc"]["fit"] == pytest.approx(3 / 4)
    # texture: class 0 recall 2/2, class 1 recall 1/2 -> 0.75; fit: classes 0 (1/2), 1 (1/1), 2 (1/1) -> 5/6
    assert s["mean_class_acc"] == pytest.approx((0.75 + 1 + 1 + 1 + 1 + 5 / 6) / 6)
    assert s["class_acc"][0][:2] == [1.0, 0.5] and s["class_acc"][0][2] is None
    # texture F1: class 0 p=2/3 r=1 -> 0.8; class 1 p=1 r=.5 -> 2/3
    f1_tex = (0.8 + 2 / 3) / 2
    f1_fit = (2 / 3 + 2 / 3 + 1) / 3   # class 0: p=1 r=.5; class 1: p=.5 r=1; class 2 perfect
    assert s["macro_f1"] == pytest.approx((f1_tex + 1 + 1 + 1 + 1 + f1_fit) / 6)


def test_majority_baseline():
    train = np.array([[1, 0, 2, 0, 2, 2], [1, 1, 2, 3, 2, 2], [0, 1, 2, 3, 2, 2]])
    pred = majority_prediction(train, K, 2)
    assert pred.tolist() == [[1, 1, 2, 3, 2, 2]] * 2


def test_prediction_file_validation_names_lines(tmp_path):
    f = tmp_path / "prediction.txt"
    f.write_text("0 0 0 0 0 0\n0 0 0\n0 0 9 0 0 0\n")
    with pytest.raises(DatasetError) as e:
        read_predictions(f, K, expected_lines=4)
    text = str(e.value)
    assert "prediction.txt:2: expected 6 integers" in text
    assert "prediction.txt:3: length = 9 is out of range 0..2" in text
    assert "has 3 line(s), expected 4" in text


def test_score_cli_on_demo(tiny_root, tmp_path, capsys):
    labels = tiny_root / "split/val_attr.txt"
    result = main([str(labels), "--truth", str(labels)])
    assert result["overall_acc"] == 1.0
    base = main(["--baseline", "majority", "--data", str(tiny_root), "--split", "val"])
    assert 0.3 < base["overall_acc"] < 0.95
    assert "(mean accuracy over the classes present; 2024 challenge)" in capsys.readouterr().out  # FashionDataset
    bad = tmp_path / "p.txt"
    bad.write_text("0 0 0 0 0 0\n")
    with pytest.raises(SystemExit):
        main([str(bad), "--truth", str(labels)])
    assert "expected 40" in capsys.readouterr().err


def _labels(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("0 0 0 0 0 0\n1 1 1 1 1 1\n")
    return f


def test_binary_prediction_file_is_a_clean_error(tmp_path, capsys):
    bad = tmp_path / "prediction.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(SystemExit) as e:
        main([str(bad), "--truth", str(_labels(tmp_path))])
    assert e.value.code == 2
    assert capsys.readouterr().err == (f"error: 1 problem(s) in prediction file {bad}:\n"
                                       f"  {bad}:1: not valid UTF-8 (byte 0x89 at column 1)\n")


def test_zipped_prediction_file_says_to_unzip(tmp_path, capsys):
    import zipfile
    z = tmp_path / "prediction.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("prediction.txt", "0 0 0 0 0 0\n1 1 1 1 1 1\n")
    with pytest.raises(SystemExit) as e:
        main([str(z), "--truth", str(_labels(tmp_path))])
    assert e.value.code == 2
    assert f"{z}: is a zip archive, not a text file; give the .txt file inside it" in capsys.readouterr().err


def test_prediction_file_with_bom(tmp_path):
    f = tmp_path / "prediction.txt"
    f.write_bytes(b"\xef\xbb\xbf0 1 2 3 4 2\n6 0 0 0 0 0\n")
    assert read_predictions(f, K, expected_lines=2).tolist() == [[0, 1, 2, 3, 4, 2], [6, 0, 0, 0, 0, 0]]


def test_empty_label_file_is_a_clean_error(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(SystemExit) as e:
        main([str(empty), "--truth", str(empty)])
    assert e.value.code == 2
    assert f"{empty}: no label lines; there is nothing to score" in capsys.readouterr().err


def test_class_average_is_the_2024_challenge_metric_by_hand():
    """Mean accuracy over every class present in the labels (absent classes skipped), each class weighing the
    same whatever its attribute; balanced accuracy instead averages within attributes first."""
    from bench.metrics import class_average_accuracy
    y = np.array([[0, 0], [0, 1], [1, 1], [2, 1]])
    p = np.array([[0, 0], [1, 1], [1, 0], [0, 1]])
    # attribute 0 (7 classes, 3..6 absent): class 0 1/2, class 1 1/1, class 2 0/1
    # attribute 1 (3 classes, 2 absent):    class 0 1/1, class 1 2/3
    expect = (0.5 + 1 + 0 + 1 + 2 / 3) / 5
    assert class_average_accuracy(y, p, (7, 3)) == pytest.approx(expect)
    s = score(y, p, (7, 3))
    assert s["class_avg_acc"] == pytest.approx(expect)
    assert s["mean_class_acc"] == pytest.approx(((0.5 + 1 + 0) / 3 + (1 + 2 / 3) / 2) / 2)  # balanced: 0.6667


def test_score_shows_the_first_20_bad_lines_counts_the_rest_and_keeps_whole_file_problems(tmp_path, capsys):
    """A prediction file of the wrong shape printed one line per bad line, without end."""
    labels = _labels(tmp_path)
    bad = tmp_path / "p.txt"
    bad.write_text("1 2 3\n" * 30)
    with pytest.raises(SystemExit) as e:
        main([str(bad), "--truth", str(labels)])
    assert e.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"error: 31 problem(s) in prediction file {bad}:"
    assert lines[1:21] == [f"  {bad}:{i}: expected 6 integers, found 3 field(s): '1 2 3'" for i in range(1, 21)]
    assert lines[21:] == ["  ... and 10 more line(s) (the first 20 are shown)", f"  {bad}: has 30 line(s), expected 2"]


# ---- the prediction CSV, the truth CSV and provenance (bench/data/predictions.py) -------------------------------

VAL = [("img/v0.jpg", "red", "s"), ("img/v1.jpg", "red", "m"), ("img/v2.jpg", "blue", ""), ("img/v3.jpg", "blue", "l"),
       ("img/v4.jpg", "red", "s")]
GUESS = {"img/v0.jpg": ("red", "s"), "img/v1.jpg": ("blue", "m"), "img/v2.jpg": ("blue", "l"),
         "img/v3.jpg": ("red", "l"), "img/v4.jpg": ("red", "m")}
# By hand. colour: right on v0 v2 v4 (3/5); size, labelled on 4 images (v2 missing): right on v0 v1 v3 (3/4).
# overall = 6 / 9 labelled cells. Classes present: red 2/3 (v0, v4 of v0 v1 v4), blue 1/2, s 1/2, m 1/1, l 1/1:
# class-average = (2/3 + 1/2 + 1/2 + 1 + 1) / 5 = 11/15; balanced = ((2/3 + 1/2) / 2 + (1/2 + 1 + 1) / 3) / 2 = 17/24.
# macro-F1: colour red p 2/3 r 2/3, blue p 1/2 r 1/2 -> 7/12; size s p 1 r 1/2 (2/3), m p 1/2 r 1 (2/3), l 1 -> 7/9;
# mean 49/72.
BY_HAND = {"overall_acc": 6 / 9, "class_avg_acc": 11 / 15, "mean_class_acc": 17 / 24, "macro_f1": 49 / 72,
           "attr_acc": {"colour": 3 / 5, "size": 3 / 4}, "missing": 1, "n": 5}


def five_root(tmp_path):
    """A CSV dataset (attributes colour: blue red, size: l m s) whose val split is VAL, one cell missing."""
    from PIL import Image
    root = tmp_path / "five"
    (root / "img").mkdir(parents=True)
    rows = [("img/t0.jpg", "train", "red", "s"), ("img/t1.jpg", "train", "blue", "m"),
            ("img/t2.jpg", "train", "red", "l"), *[(p, "val", c, s) for p, c, s in VAL]]
    for p, *_ in rows:
        Image.new("RGB", (4, 4), (90, 90, 90)).save(root / p)
    (root / "labels.csv").write_text("image,split,colour,size\n" + "".join(",".join(r) + "\n" for r in rows))
    return root


def _check(result):
    for k, v in BY_HAND.items():
        want = {a: pytest.approx(x) for a, x in v.items()} if isinstance(v, dict) else pytest.approx(v)
        assert result[k] == want, k


def test_a_prediction_csv_scored_by_hand_against_a_split_a_truth_csv_and_the_two_files_alone(tmp_path, capsys):
    root = five_root(tmp_path)
    truth = tmp_path / "truth.csv"
    truth.write_text("image,size,colour\n" + "".join(f"{p},{s},{c}\n" for p, c, s in VAL))  # any column order
    pred = tmp_path / "pred.csv"  # rows in any order, paths as bench.predict writes them (ROOT/img/...)
    pred.write_text("image,colour,colour_prob,size,size_prob\n" + "".join(
        f"{root / p},{c},0.9,{s},0.8\n" for p, (c, s) in reversed(GUESS.items())))
    _check(main([str(pred), "--data", str(root), "--split", "val"]))
    out = capsys.readouterr().out
    assert f"{pred} against the val split of {root} (5 images)" in out
    assert "overall accuracy     0.6667   (n=5 images x 2 attributes, 1 missing labels)" in out
    assert "per attribute        colour 0.600  size 0.750" in out and "macro-F1             0.6806" in out
    assert "challenge" not in out  # a CSV dataset's metrics are named by what they are (metrics.metric_name)
    _check(main([str(pred), "--truth", str(truth), "--data", str(root)]))
    _check(main([str(pred), "--truth", str(truth)]))  # no dataset: the schema comes from the two files
    assert "no --data: the attributes are the truth file's" in capsys.readouterr().out


def test_both_writers_csvs_round_trip_through_score(tmp_path):
    """bench.ensemble's prediction.csv and bench.predict's CSV (with and without --probs) are one format that
    bench.score reads back to the same numbers."""
    from pathlib import Path

    from bench.data import open_dataset
    from bench.ensembling.ensemble import write_prediction_csv
    from bench.inference.predict import Plan, Prediction, csv_text
    root = five_root(tmp_path)
    ds = open_dataset(root)
    paths = list(ds.splits["val"].paths)
    pred = np.array([[ds.class_names[a].index(GUESS[p][a]) for a in range(2)] for p in paths])
    probs = np.concatenate([np.eye(len(c))[pred[:, a]] * 0.8 + 0.2 / len(c) for a, c in enumerate(ds.class_names)], 1)
    ens = write_prediction_csv(pred, tmp_path / "sub", paths, ds.attributes, ds.class_names, probs=probs)
    _check(main([str(ens), "--data", str(root), "--split", "val"]))
    plan = Plan("model default/x", ["default/x"], [(8, "letterbox")], ["plain"], np.ones(1), "mean", "argmax", {}, None,
                "overall", ds.attributes, [list(c) for c in ds.class_names], ds.num_classes)
    for all_probs in (False, True):
        f = tmp_path / f"predict-{all_probs}.csv"
        f.write_text(csv_text(Prediction([Path(root / p) for p in paths], probs, pred, []), plan, all_probs))
        _check(main([str(f), "--data", str(root), "--split", "val"]))
    assert ens.read_text().splitlines()[0] == (tmp_path / "predict-False.csv").read_text().splitlines()[0]


def _refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_score_refuses_unknown_and_missing_images_unknown_classes_and_other_attributes(tmp_path, capsys):
    root = five_root(tmp_path)
    data = ["--data", str(root), "--split", "val"]
    f = tmp_path / "p.csv"
    good = ["image,colour,size"] + [f"{p},{c},{s}" for p, (c, s) in GUESS.items()]
    f.write_text("\n".join([*good[:3], "img/nope.jpg,red,s", *good[4:]]) + "\n")  # v2 replaced on line 4
    err = _refused([str(f), *data], capsys)
    assert f"{f}:4: image 'img/nope.jpg' is not an image of the val split of {root}" in err
    assert f"the val split of {root}: 1 of its 5 images have no prediction: 'img/v2.jpg'" in err
    f.write_text("\n".join([*good, good[2]]) + "\n")  # v1 twice
    assert f"{f}:7: image 'img/v1.jpg' is predicted twice (first at {f}:3)" in _refused([str(f), *data], capsys)
    f.write_text("\n".join([good[0], "img/v0.jpg,purple,s", *good[2:]]) + "\n")
    assert f"{f}:2:2: 'purple' is not a class of 'colour' (blue, red)" in _refused([str(f), *data], capsys)
    f.write_text("image,colour,shape\n" + "".join(f"{p},{c},round\n" for p, (c, _) in GUESS.items()))
    err = _refused([str(f), *data], capsys)
    assert f"{f}:1:3: column 'shape' is not an attribute of the dataset (its attributes: colour, size)" in err
    assert f"{f}:1: no column for attribute 'size'" in err
    # the truth CSV: an unknown class and an image the prediction does not have
    f.write_text("\n".join(good) + "\n")
    t = tmp_path / "t.csv"
    t.write_text("image,colour,size\nimg/v0.jpg,red,xl\nimg/v9.jpg,red,s\n" + "".join(
        f"{p},{c},{s}\n" for p, c, s in VAL[1:]))
    assert f"{t}:2:3: 'xl' is not a class of 'size' (l, m, s)" in _refused([str(f), "--truth", str(t), "--data",
                                                                              str(root)], capsys)
    t.write_text("image,colour,size\nimg/v9.jpg,red,s\n" + "".join(f"{p},{c},{s}\n" for p, c, s in VAL[1:]))
    err = _refused([str(f), "--truth", str(t), "--data", str(root)], capsys)
    assert f"{f}:2: image 'img/v0.jpg' is not an image of {t}" in err and f"{t}:2: image 'img/v9.jpg' has no " \
                                                                         f"prediction" in err


def test_a_prediction_txt_is_scored_only_against_the_split_its_provenance_names(tmp_path, capsys):
    """bench.ensemble writes prediction.txt with a provenance file; a test-split prediction scored against val
    labels of the same length is refused (it printed 0.51 before), and a file without provenance says so."""
    from bench.data import open_dataset, provenance_path
    from bench.data.demo import DemoSpec, write_demo
    from bench.ensembling.ensemble import write_submission
    root = write_demo(tmp_path / "ds", DemoSpec(seed=1, train=12, val=6, test=6, width=16, height=20))
    ds = open_dataset(root)
    test = list(ds.splits["test"].paths)
    hidden = np.loadtxt(root / "hidden/test_attr.txt", dtype=int)
    pred = hidden.copy()
    pred[:3, 0] = (pred[:3, 0] + 1) % 7  # 3 of 36 cells wrong
    txt, _ = write_submission(pred, tmp_path / "sub", ds.num_classes, provenance={
        "split": "test", "images": test, "dataset": ds.fingerprint(), "data_root": str(root)})
    err = _refused([str(txt), "--data", str(root), "--split", "val"], capsys)
    assert f"{txt}: its provenance file says it predicts the test split of {root}" in err
    assert f"{txt}:1: image '{test[0]}' is not an image of the val split of {root}" in err
    err = _refused([str(txt), "--truth", str(root / "split/val_attr.txt")], capsys)
    assert "says it predicts the test split, but" in err and "labels the val split" in err
    assert main([str(txt), "--data", str(root), "--split", "test"])["overall_acc"] == pytest.approx(33 / 36)
    out = capsys.readouterr().out
    assert f"the test split's labels are {root / 'hidden/test_attr.txt'}" in out and "provenance unknown" not in out
    txt.write_text(" ".join(["0"] * 6) + "\n" + "".join(txt.read_text().splitlines(True)[1:]))  # edited by hand
    main([str(txt), "--data", str(root), "--split", "val"])
    assert "provenance unknown: " in (out := capsys.readouterr().out) and "describes another version" in out
    provenance_path(txt).unlink()
    main([str(txt), "--data", str(root), "--split", "val"])
    out = capsys.readouterr().out
    assert f"provenance unknown: {txt} has no provenance file (prediction.txt.provenance.json" in out


def test_labels_is_the_datasets_label_file_and_truth_the_true_labels(tmp_path, capsys):
    f = _labels(tmp_path)
    err = _refused([str(f), "--labels", str(f)], capsys)
    assert "--labels FILE is a CSV dataset's label file (as in bench.run)" in err and "--truth FILE" in err


def test_bench_ensemble_writes_the_provenance_that_score_reads(demo_runs, tiny_root, tmp_path, capsys):
    import json
    import shutil

    from bench.data import open_dataset, provenance_path
    from bench.ensemble import main as ensemble_main
    runs = tmp_path / "runs"
    shutil.copytree(demo_runs, runs)  # the shared runs stay as they are
    result = ensemble_main(["--runs-dir", str(runs), "--out", str(tmp_path / "sub"), "--no-report",
                            "--name", "prov", "--weights", "uniform"])
    txt = tmp_path / "sub/prediction.txt"
    prov = json.loads(provenance_path(txt).read_text())
    assert prov["split"] == "test" and prov["images"] == list(open_dataset(tiny_root).splits["test"].paths)
    capsys.readouterr()
    assert main([str(txt), "--data", str(tiny_root), "--split", "test"]) == result["demo_test"]
    assert "provenance unknown" not in capsys.readouterr().out


@pytest.mark.parametrize("seed", range(6))
def test_every_score_equals_sklearns_on_random_labels_with_missing_cells_and_absent_classes(seed):
    """metrics.score computes balanced accuracy, macro-F1 and per-class recall from one confusion matrix per
    attribute (no per-call validation: most of a report's build went there); sklearn is the independent reference."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score
    rng = np.random.default_rng(seed)
    K = (7, 3, 3, 4, 6, 3)
    n = int(rng.integers(1, 60))
    y = np.stack([rng.integers(0, k - 1, n) for k in K], 1)  # the last class of each attribute never labelled
    p = np.stack([rng.integers(0, k, n) for k in K], 1)      # ... but predicted
    y[rng.random(y.shape) < 0.2] = -1
    s = score(y, p, K)
    for a, k in enumerate(K):
        keep = y[:, a] != -1
        t, q = y[keep, a], p[keep, a]
        if not len(t):
            assert all(v is None for v in s["class_acc"][a])  # no labelled image: no class present
            continue
        rec = recall_score(t, q, labels=np.arange(k), average=None, zero_division=0)
        present = np.bincount(t, minlength=k) > 0
        got = np.array([np.nan if v is None else v for v in s["class_acc"][a]])
        assert np.allclose(got[present], rec[present]) and np.isnan(got[~present]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        bal = [balanced_accuracy_score(y[y[:, a] != -1, a], p[y[:, a] != -1, a]) for a in range(6)
               if (y[:, a] != -1).any()]
    f1 = [f1_score(y[y[:, a] != -1, a], p[y[:, a] != -1, a], average="macro") for a in range(6)
          if (y[:, a] != -1).any()]
    assert s["mean_class_acc"] == pytest.approx(np.mean(bal)) and s["macro_f1"] == pytest.approx(np.mean(f1))
