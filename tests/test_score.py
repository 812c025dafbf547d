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
    result = main([str(labels), "--labels", str(labels)])
    assert result["overall_acc"] == 1.0
    base = main(["--baseline", "majority", "--data", str(tiny_root), "--split", "val"])
    assert 0.3 < base["overall_acc"] < 0.95
    bad = tmp_path / "p.txt"
    bad.write_text("0 0 0 0 0 0\n")
    with pytest.raises(SystemExit):
        main([str(bad), "--labels", str(labels)])
    assert "expected 40" in capsys.readouterr().err


def _labels(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("0 0 0 0 0 0\n1 1 1 1 1 1\n")
    return f


def test_binary_prediction_file_is_a_clean_error(tmp_path, capsys):
    bad = tmp_path / "prediction.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(SystemExit) as e:
        main([str(bad), "--labels", str(_labels(tmp_path))])
    assert e.value.code == 2
    assert capsys.readouterr().err == (f"error: 1 problem(s) in prediction file {bad}:\n"
                                       f"  {bad}:1: not valid UTF-8 (byte 0x89 at column 1)\n")


def test_zipped_prediction_file_says_to_unzip(tmp_path, capsys):
    import zipfile
    z = tmp_path / "prediction.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("prediction.txt", "0 0 0 0 0 0\n1 1 1 1 1 1\n")
    with pytest.raises(SystemExit) as e:
        main([str(z), "--labels", str(_labels(tmp_path))])
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
        main([str(empty), "--labels", str(empty)])
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
        main([str(bad), "--labels", str(labels)])
    assert e.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"error: 31 problem(s) in prediction file {bad}:"
    assert lines[1:21] == [f"  {bad}:{i}: expected 6 integers, found 3 field(s): '1 2 3'" for i in range(1, 21)]
    assert lines[21:] == ["  ... and 10 more line(s) (the first 20 are shown)", f"  {bad}: has 30 line(s), expected 2"]
