import os

import numpy as np
import pytest

from bench.data import DatasetError, open_dataset
from bench.data.demo import REAL_COUNTS, DemoSpec, draw_garment, sample_labels, write_demo
from bench.data.images import load_images


def test_demo_is_deterministic_per_seed(tmp_path):
    spec = DemoSpec(seed=3, train=6, val=3, test=3, width=32, height=40)
    a, b = write_demo(tmp_path / "a", spec), write_demo(tmp_path / "b", spec)
    c = write_demo(tmp_path / "c", DemoSpec(seed=4, train=6, val=3, test=3, width=32, height=40))
    for rel in ("split/train_attr.txt", "hidden/test_attr.txt", "img/00004.jpg"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert (a / "split/train_attr.txt").read_text() != (c / "split/train_attr.txt").read_text()


def test_demo_layout_hides_test_labels(tiny_root):
    assert not (tiny_root / "split/test_attr.txt").exists()
    assert len((tiny_root / "hidden/test_attr.txt").read_text().splitlines()) == 30


def test_demo_class_balance_follows_real_frequencies():
    labels = sample_labels(np.random.default_rng(0), 20000)
    for a, counts in enumerate(REAL_COUNTS):
        want = np.array(counts) / sum(counts)
        got = np.bincount(labels[:, a], minlength=len(counts)) / len(labels)
        assert np.abs(got - want).max() < 0.012, (a, got, want)


def test_each_attribute_changes_the_picture():
    base = np.array([5, 0, 0, 0, 2, 2])
    ref = draw_garment(base, np.random.default_rng(1), 48, 64).astype(int)
    for a, k in enumerate((7, 3, 3, 4, 6, 3)):
        for c in range(k):
            if c == base[a]:
                continue
            lab = base.copy()
            lab[a] = c
            img = draw_garment(lab, np.random.default_rng(1), 48, 64).astype(int)
            assert np.abs(img - ref).mean() > 1.0, f"attribute {a} class {c} is not visible"


def test_cache_hit_and_invalidation(tiny_copy, tmp_path):
    ds = open_dataset(tiny_copy)
    files = ds.files("val")
    cache = tmp_path / "c"
    first = load_images(files, 32, cache_dir=cache, progress=False)
    assert first.shape == (40, 32, 32, 3) and first.dtype == np.uint8
    assert len(list(cache.glob("*.npy"))) == 1
    again = load_images(files, 32, cache_dir=cache, progress=False)
    assert np.array_equal(first, again) and len(list(cache.glob("*.npy"))) == 1
    # a changed image (new content, new mtime) must decode again and give new pixels
    (files[0]).write_bytes((files[1]).read_bytes())
    os.utime(files[0], ns=(1, 1))
    changed = load_images(files, 32, cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.npy"))) == 2
    assert np.array_equal(changed[0], changed[1]) and not np.array_equal(changed[0], first[0])
    load_images(files, 32, policy="stretch", cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.npy"))) == 3


def test_letterbox_keeps_aspect_and_pads(tiny_root, tmp_path):
    img = load_images(open_dataset(tiny_root).files("train")[:1], 64, cache_dir=tmp_path, progress=False)[0]
    # 48x64 photo into 64x64: 8 padded columns each side hold the pad colour
    assert (img[:, :7] == np.array([124, 116, 104])).all() and (img[:, -7:] == np.array([124, 116, 104])).all()


def test_truncated_jpeg_fails_with_file_name(tiny_copy, tmp_path):
    f = tiny_copy / "img/00002.jpg"
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(DatasetError, match="00002.jpg"):
        load_images([f], 32, cache_dir=tmp_path, progress=False)


def test_decode_writes_a_memory_mapped_cache_and_leaves_nothing_on_failure(tiny_copy, tmp_path, monkeypatch):
    import bench.data.images as images
    ds = open_dataset(tiny_copy)
    files = ds.files("train")  # 120 images: two chunks of 64
    cache = tmp_path / "c"
    mapped = load_images(files, 32, cache_dir=cache, progress=False, mmap=True)
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    assert np.array_equal(mapped, load_images(files, 32, cache_dir=cache, progress=False))
    assert [p.name.count(".tmp") for p in cache.iterdir()] == [0]

    # never all N images in memory: each decoded chunk goes to the file, nothing concatenates them
    monkeypatch.setattr(np, "concatenate", lambda *a, **k: pytest.fail("decoded chunks were concatenated"))
    again = load_images(files, 24, cache_dir=cache, progress=False, mmap=True)
    assert again.shape == (120, 24, 24, 3)
    monkeypatch.undo()

    # killed after the first chunk: no cache file, no temporary file
    real, calls = images._decode_chunk, []

    def killed(paths, size, policy):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(paths, size, policy)

    monkeypatch.setattr(images, "_decode_chunk", killed)
    with pytest.raises(KeyboardInterrupt):
        load_images(files, 16, cache_dir=tmp_path / "k", n_jobs=1, progress=False)
    assert list((tmp_path / "k").iterdir()) == []
    monkeypatch.undo()

    # every bad file named (one in each chunk), and no cache file left
    for name in ("00002.jpg", "00100.jpg"):
        f = tiny_copy / "img" / name
        f.write_bytes(f.read_bytes()[:200])
    bad = [f for f in files] + [tiny_copy / "img/00002.jpg", tiny_copy / "img/00100.jpg"]
    with pytest.raises(DatasetError, match="00002.jpg") as e:
        load_images(bad, 32, cache_dir=tmp_path / "b", progress=False)
    assert "00100.jpg" in str(e.value)
    assert list((tmp_path / "b").iterdir()) == []
