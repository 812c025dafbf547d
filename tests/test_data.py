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


# ---- the CSV layout's line numbers, and images too large or transparent ----------------------------------------

def _csv_root(tmp_path, text: str, images=("a", "b", "c", "d", "e")):
    from PIL import Image
    root = tmp_path / "csvds"
    (root / "img").mkdir(parents=True)
    for name in images:
        Image.new("RGB", (4, 4), (99, 99, 99)).save(root / f"img/{name}.jpg")
    (root / "labels.csv").write_bytes(text.encode())
    return root


def test_csv_line_numbers_count_a_quoted_line_break_and_a_form_feed_as_an_editor_does(tmp_path):
    """csv rows were numbered as if one per line (a quoted line break shifted every later line by one back) and
    read through str.splitlines (a form feed in a cell ended a line: every later line one on)."""
    def never_in_train(line, cls):
        return (f"{root / 'labels.csv'}:{line}:3: class {cls!r} of attribute 'colour' is in val but never in train (a "
                f"model cannot learn it)")
    root = _csv_root(tmp_path, 'image,split,colour\n'
                               'img/a.jpg,train,"red\nish"\n'     # lines 2-3: one row
                               'img/b.jpg,train,blue\n'
                               'img/c.jpg,val,green\n')            # line 5
    assert problems_of(root) == [never_in_train(5, "green")]
    (root / "labels.csv").write_text('image,split,colour\n'
                                     'img/a.jpg,train,blue\x0c\n'      # line 2: a form feed in a cell
                                     'img/b.jpg,train,red\n'
                                     'img/c.jpg,val,green\n')           # line 4
    assert problems_of(root) == [never_in_train(4, "green")]


def test_an_unclosed_quote_is_named_without_a_spurious_empty_split(tmp_path):
    text = ('image,split,colour\nimg/a.jpg,train,red\nimg/b.jpg,train,"blue\nimg/c.jpg,val,red\n'
            'img/d.jpg,val,blue\n')
    root = _csv_root(tmp_path, text)
    probs = problems_of(root)
    assert len(probs) == 1, probs
    assert probs[0].startswith(f"{root / 'labels.csv'}:3:3: a quoted field opened here is never closed")
    assert "split is empty" not in probs[0]


def _png_header(path, width, height):
    """A PNG that declares width x height pixels (its data is never reached)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def test_a_196_megapixel_photo_is_called_too_large_with_the_setting_that_allows_it(tiny_copy, monkeypatch):
    """It was 'unreadable or corrupt image (DecompressionBombError: ... could be decompression bomb DOS attack)'."""
    big = tiny_copy / "img/00003.jpg"
    _png_header(big, 14000, 14000)
    probs = problems_of(tiny_copy)
    assert probs == [f"{big}: image too large, 14000 x 14000 = 196.0 megapixels, over the limit of 179.0 megapixels "
                     f"(a guard against decompression bombs); if the file is trusted, allow it: export "
                     f"FASHION_BENCH_MAX_PIXELS=196000000 (0: no limit)"]
    monkeypatch.setenv("FASHION_BENCH_MAX_PIXELS", "196000000")  # allowed: now it is decoded (this one is truncated)
    assert "too large" not in problems_of(tiny_copy)[0]
    from bench.data.images import ImageTooLarge, decode
    monkeypatch.setenv("FASHION_BENCH_MAX_PIXELS", "3000")  # the same limit for the decoder (cache, bench.predict)
    with pytest.raises(ImageTooLarge, match="48 x 64 = 0.0 megapixels"):
        decode(tiny_copy / "img/00004.jpg", 32)


def test_transparent_pixels_are_composited_on_white_and_said_once(tmp_path, capsys):
    """A transparent PNG's hidden colour (here red under alpha 0) showed through convert('RGB')."""
    from PIL import Image

    from bench.data import images, opening
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255                    # red everywhere ...
    rgba[:4, :, 3] = 0                    # ... transparent in the top half
    rgba[4:, :, 3] = 255                  # ... opaque red below
    for name in ("a", "b"):
        Image.fromarray(rgba, "RGBA").save(tmp_path / f"{name}.png")
    opening._said.clear()
    out = images.decode(tmp_path / "a.png", 8, "stretch")
    assert (out[:4] == 255).all() and (out[4:] == [255, 0, 0]).all()
    images.decode(tmp_path / "b.png", 8, "stretch")
    err = capsys.readouterr().err
    assert err.count("transparent pixels") == 1 and "composited on (255, 255, 255) (white)" in err
