import numpy as np
import pytest

from bench.data import DatasetError, open_dataset, resolve_root


def problems_of(root):
    with pytest.raises(DatasetError) as e:
        open_dataset(root)
    return e.value.problems


def test_valid_demo_dataset_opens(tiny_root):
    ds = open_dataset(tiny_root)
    assert ds.num_classes == (7, 3, 3, 4, 6, 3)
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [120, 40, 30]
    assert ds.splits["test"].labels is None
    assert ds.splits["train"].labels.shape == (120, 6)
    assert ds.class_names[3][2] == "square_neckline"


def test_missing_split_file(tiny_copy):
    (tiny_copy / "split/val.txt").unlink()
    probs = problems_of(tiny_copy)
    assert any("split/val.txt" in p and "missing split file" in p for p in probs)


def test_listed_image_missing_names_file_and_line(tiny_copy):
    (tiny_copy / "img/00003.jpg").unlink()
    probs = problems_of(tiny_copy)
    assert any("train.txt:4:" in p and "img/00003.jpg" in p and "missing" in p for p in probs)


def test_bad_label_lines_all_reported_at_once(tiny_copy):
    f = tiny_copy / "split/train_attr.txt"
    lines = f.read_text().splitlines()
    lines[0] = "1 2 3"                # wrong field count
    lines[1] = "1 x 0 0 0 0"          # not an integer
    lines[2] = "7 0 0 0 0 0"          # texture has classes 0..6
    f.write_text("\n".join(lines) + "\n")
    probs = problems_of(tiny_copy)
    assert any("train_attr.txt:1:" in p and "expected 6 integers" in p for p in probs)
    assert any("train_attr.txt:2:" in p and "not an integer" in p for p in probs)
    assert any("train_attr.txt:3:" in p and "texture = 7 is out of range 0..6" in p for p in probs)


def test_line_count_mismatch(tiny_copy):
    f = tiny_copy / "split/val_attr.txt"
    f.write_text("\n".join(f.read_text().splitlines()[:-2]) + "\n")
    probs = problems_of(tiny_copy)
    assert any("val_attr.txt" in p and "38 label line(s)" in p and "40 image(s)" in p for p in probs)


def test_duplicate_across_splits(tiny_copy):
    f = tiny_copy / "split/test.txt"
    f.write_text(f.read_text() + "img/00000.jpg\n")
    probs = problems_of(tiny_copy)
    assert any("img/00000.jpg" in p and "also in split 'train'" in p for p in probs)


def test_corrupt_jpeg_named(tiny_copy):
    (tiny_copy / "img/00005.jpg").write_bytes(b"not a jpeg at all")
    probs = problems_of(tiny_copy)
    assert any("00005.jpg" in p and "corrupt" in p for p in probs)


def test_truncated_jpeg_is_reported_with_the_other_problems(tiny_copy):
    """PIL's verify() passed a truncated JPEG: it failed at decode time, alone, after the run folder existed."""
    f = tiny_copy / "img/00007.jpg"
    data = f.read_bytes()
    f.write_bytes(data[:len(data) // 2])
    (tiny_copy / "img/00003.jpg").unlink()
    problems = problems_of(tiny_copy)
    assert problems[0] == f"{tiny_copy}/split/train.txt:4: image 'img/00003.jpg' is listed but missing"
    assert len(problems) == 2 and problems[1].startswith(f"{tiny_copy}/img/00007.jpg: unreadable or corrupt image "
                                                         f"(OSError: image file is truncated")


def test_dataset_is_never_modified(tiny_copy):
    before = {p: p.stat().st_mtime_ns for p in tiny_copy.rglob("*")}
    open_dataset(tiny_copy)
    after = {p: p.stat().st_mtime_ns for p in tiny_copy.rglob("*")}
    assert before == after


def test_resolve_root_order(tmp_path, monkeypatch):
    assert resolve_root(str(tmp_path)) == tmp_path
    monkeypatch.setenv("FASHION_DATA", "/somewhere")
    assert str(resolve_root(None)) == "/somewhere"


def test_fingerprint_tracks_labels(tiny_copy):
    a = open_dataset(tiny_copy).fingerprint()
    f = tiny_copy / "split/train_attr.txt"
    lines = f.read_text().splitlines()
    row = np.array(lines[0].split(), int)
    row[5] = (row[5] + 1) % 3
    lines[0] = " ".join(map(str, row))
    f.write_text("\n".join(lines) + "\n")
    assert open_dataset(tiny_copy).fingerprint() != a


def _replace_line(path, index, raw: bytes):
    lines = path.read_bytes().split(b"\n")
    lines[index] = raw
    path.write_bytes(b"\n".join(lines))


def test_non_utf8_lines_named_with_every_other_problem(tiny_copy):
    _replace_line(tiny_copy / "split/train.txt", 4, b"img/0\xff004.jpg")
    _replace_line(tiny_copy / "split/val_attr.txt", 2, "é".encode() + b" \xe9 0 0 0 0")  # 'é' is 1 char, 2 bytes
    (tiny_copy / "img/00130.jpg").unlink()  # val.txt line 11
    probs = problems_of(tiny_copy)
    assert f"{tiny_copy}/split/train.txt:5: not valid UTF-8 (byte 0xff at column 6)" in probs
    assert f"{tiny_copy}/split/val_attr.txt:3: not valid UTF-8 (byte 0xe9 at column 3)" in probs
    assert f"{tiny_copy}/split/val.txt:11: image 'img/00130.jpg' is listed but missing" in probs
    assert len(probs) == 3  # an unreadable file is not also reported as having the wrong number of lines


def test_non_utf8_class_name_file(tiny_copy):
    _replace_line(tiny_copy / "split/list_attr_cloth.txt", 4, b"gr\xc3phic 1")
    assert problems_of(tiny_copy) == [f"{tiny_copy}/split/list_attr_cloth.txt:5: not valid UTF-8 "
                                      f"(byte 0xc3 at column 3)"]


def test_utf8_bom_is_accepted(tiny_root, tiny_copy):
    for name in ("train.txt", "train_attr.txt", "val.txt", "val_attr.txt", "test.txt", "list_attr_cloth.txt"):
        f = tiny_copy / "split" / name
        f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    ds = open_dataset(tiny_copy)
    assert ds.splits["train"].paths[0] == "img/00000.jpg"
    assert (ds.splits["train"].labels == open_dataset(tiny_root).splits["train"].labels).all()
    assert ds.fingerprint() == open_dataset(tiny_root).fingerprint()


def test_duplicate_names_the_line_in_both_files(tiny_copy):
    f = tiny_copy / "split/test.txt"
    f.write_text(f.read_text() + "img/00002.jpg\n")
    assert problems_of(tiny_copy) == [f"{tiny_copy}/split/test.txt:31: image 'img/00002.jpg' is also in split "
                                      f"'train' ({tiny_copy}/split/train.txt:3)"]


def test_an_image_listed_twice_in_one_split_is_named_with_both_lines(tiny_copy):
    """A duplicate within val or test was accepted silently and scored twice."""
    f = tiny_copy / "split/val.txt"
    lines = f.read_text().splitlines()
    f.write_text("\n".join([*lines[:5], lines[1], *lines[5:], "./" + lines[1]]) + "\n")
    (tiny_copy / "split/val_attr.txt").write_text((tiny_copy / "split/val_attr.txt").read_text() * 2)
    assert problems_of(tiny_copy) == [
        f"{tiny_copy}/split/val.txt:6: image {lines[1]!r} is listed twice in split 'val' (first at line 2); list each "
        f"image once",
        f"{tiny_copy}/split/val.txt:42: image {'./' + lines[1]!r} is listed twice in split 'val' (first at line 2); "
        f"list each image once",
        f"{tiny_copy}/split/val_attr.txt: 80 label line(s) but val.txt lists 42 image(s); the two files must match "
        f"line for line"]


def test_line_numbers_count_blank_lines(tiny_copy):
    f = tiny_copy / "split/train.txt"
    f.write_text("\n" + f.read_text())
    (tiny_copy / "img/00003.jpg").unlink()
    assert f"{tiny_copy}/split/train.txt:5: image 'img/00003.jpg' is listed but missing" in problems_of(tiny_copy)


@pytest.mark.parametrize("split, need", [("train", "training needs at least one image"),
                                         ("val", "model selection and scoring need at least one image")])
def test_empty_train_or_val_split_is_an_error(tiny_copy, split, need):
    (tiny_copy / f"split/{split}.txt").write_text("")
    (tiny_copy / f"split/{split}_attr.txt").write_text("")
    assert problems_of(tiny_copy) == [f"{tiny_copy}/split/{split}.txt: the {split} split is empty; {need}"]


def test_empty_test_split_is_allowed(tiny_copy):
    (tiny_copy / "split/test.txt").write_text("\n")
    ds = open_dataset(tiny_copy)
    assert len(ds.splits["test"]) == 0 and len(ds.fingerprint()) == 16
