"""Mistakes you can see (bench/reporting/gallery.py): which images the galleries pick, in which order, and that the
report links them and survives a dataset that moved."""
import itertools
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench.reporting import gallery as rg
from bench.reporting.leaderboard import build_report


def test_confident_mistakes_are_the_wrong_ones_most_confident_first_and_skip_missing_labels():
    labels = np.array([0, 1, -1, 2, 1, 0, 2])
    pred = np.array([1, 1, 0, 0, 2, 0, 1])
    conf = np.array([.6, .9, .99, .8, .6, .95, .7])
    # wrong: rows 0 (p .6), 3 (.8), 4 (.6), 6 (.7); row 2 has no label (its p .99 would lead); ties keep split order
    assert rg.confident_mistakes(labels, pred, conf, 10).tolist() == [3, 6, 0, 4]
    assert rg.confident_mistakes(labels, pred, conf, 2).tolist() == [3, 6]
    assert rg.confident_mistakes(labels, labels, conf, 5).tolist() == []


def test_rarest_classes_by_train_count_among_classes_with_images_here():
    counts = [[5, 1, 9], [2, 7]]
    val = np.array([[0, 0], [2, 1], [0, -1]])  # attribute 0 class 1 (train 1) has no val image
    assert rg.rarest_classes(counts, val, 2) == ([(1, 0), (0, 0)], [(0, 1)])
    assert rg.rarest_classes(counts, val, 9)[0] == [(1, 0), (0, 0), (1, 1), (0, 2)]


def test_an_entry_shows_its_plain_view_in_the_main_column_and_its_declared_views_beside_it():
    """bench/reporting/predictions.py decides once which predictions an entry shows; the gallery draws the main
    column (so its counts agree with the per-class accuracy beside them) and says what its p is."""
    from bench.reporting.predictions import shown
    plain = np.array([[.7, .3, .5, .3, .2], [.4, .6, .1, .1, .8]])
    flip = np.array([[.1, .9, .5, .3, .2], [.4, .6, .1, .8, .1]])
    # a model: plain argmax in the main column, the argmax of the plain + flip mean beside it
    s = shown("model", {"num_classes": [2, 3]}, {"plain": plain, "flip": flip})
    assert s.main.pred.tolist() == [[0, 0], [1, 2]] and s.main.conf.tolist() == [[.7, .5], [.6, .8]]
    assert s.tta.pred.tolist() == [[1, 0], [1, 1]] and s.tta.views == "plain+flip"
    assert s.tta.conf == pytest.approx(np.array([[.6, .5], [.6, .45]]))
    assert "plain-view argmax" in rg.describe(s.main, {"kind": "model"})
    # an ensemble at views plain+flip: its stored combined probabilities are at those views; its rule's plain-view
    # twin (pred_plain) is the main column, its pred the TTA column, each p read from the stored probabilities
    meta = {"kind": "ensemble", "num_classes": [2, 3], "views": ["plain", "flip"], "decision": "logit_adjusted"}
    rule, twin = np.array([[1, 1], [1, 2]]), np.array([[0, 2], [1, 0]])
    s = shown("ensemble", meta, {"plain": plain, "pred": rule, "pred_plain": twin})
    assert s.main.pred.tolist() == twin.tolist() and s.main.views == "plain" and s.main.conf_views == "plain+flip"
    assert s.main.conf.tolist() == [[.7, .2], [.6, .1]]
    assert s.tta.pred.tolist() == rule.tolist() and s.tta.conf.tolist() == [[.3, .3], [.6, .8]]
    what = rg.describe(s.main, meta)
    assert "`logit_adjusted` predictions at views plain" in what and "main column" in what
    assert "at its views plain+flip (its plain-view probabilities are not stored)" in what
    # an entry that also stored the plain view's combined probabilities: the main column's p is read from those
    s = shown("ensemble", meta, {"plain": plain, "pred": rule, "pred_plain": twin, "plain_view": flip})
    assert s.main.conf_views == "plain" and s.main.conf.tolist() == [[.1, .2], [.6, .1]]
    assert "not stored" not in rg.describe(s.main, meta)
    # at views plain, or an entry from before the plain-view twin was stored: one column, at its declared views,
    # which is also its TTA column
    s = shown("ensemble", {**meta, "views": ["plain"]}, {"plain": plain, "pred": rule, "pred_plain": rule})
    assert s.main.pred.tolist() == rule.tolist() and s.tta is s.main and s.main.conf_views == "plain"
    s = shown("ensemble", meta, {"plain": plain, "pred": rule})
    assert s.main.pred.tolist() == rule.tolist() and s.main.views == "plain+flip" and s.tta is s.main


@pytest.fixture(scope="module")
def csv_runs(tmp_path_factory):
    """A CSV demo (2 attributes, 30% missing labels) and a finished model run on it whose val probabilities are
    seeded random numbers: every selection can be computed by hand, nothing trains."""
    from bench.artifacts import save_probs, write_json
    from bench.data import class_counts, open_dataset
    from bench.data.demo import DemoSpec, write_demo
    base = tmp_path_factory.mktemp("gallery")
    root = write_demo(base / "ds", DemoSpec(seed=1, train=30, val=24, test=2, width=40, height=30,
                                            schema=(("colour", 3), ("category", 5)), missing=0.3))
    ds = open_dataset(root)
    labels = ds.splits["val"].labels
    assert (labels == -1).any()
    rng = np.random.default_rng(0)
    probs = np.concatenate([rng.dirichlet(np.ones(k), len(labels)) for k in ds.num_classes], 1)
    d = base / "runs/r/m"
    d.mkdir(parents=True)
    save_probs(d / "probs_val.npz", plain=probs, labels=labels)
    counts = [c.tolist() for c in class_counts(ds.splits["train"].labels, ds.num_classes)]
    write_json({"kind": "model", "status": "done", "num_classes": list(ds.num_classes), "dataset": "fp",
                "attributes": list(ds.attributes), "class_names": [list(c) for c in ds.class_names],
                "config": {"dataset": "fp", "recipe": {"select": "last"}}, "train_class_counts": counts,
                "data_root": str(root), "data_layout": ds.layout}, d / "run.json")
    return base / "runs", ds, probs


@pytest.fixture
def recorded(monkeypatch):
    """Every grid drawn: (file name, title, cells)."""
    drawn = []
    draw = rg.draw_grid

    def record(cells, path, title, columns):
        drawn.append((path.name, title, cells))
        draw(cells, path, title, columns)

    monkeypatch.setattr(rg, "draw_grid", record)
    return drawn


def links_resolve(md: str, out: Path) -> list[str]:
    links = re.findall(r"\]\((leaderboard_files/[^)]+)\)", md)
    assert links and all((out / link).is_file() for link in links)
    return links


def test_report_draws_each_attributes_confident_mistakes_and_the_rarest_classes(csv_runs, tmp_path, recorded):
    runs, ds, probs = csv_runs
    out = tmp_path / "rep"
    md = build_report(runs, out, quiet=True).read_text()
    links = links_resolve(md, out)
    grids = {name: (title, cells) for name, title, cells in recorded}
    labels, files, names = ds.splits["val"].labels, ds.files("val"), ds.class_names
    edges = np.cumsum([0, *ds.num_classes])
    for a, attr in enumerate(ds.attributes):
        p = probs[:, edges[a]:edges[a + 1]]
        wrong = [i for i in range(len(labels)) if labels[i, a] >= 0 and p[i].argmax() != labels[i, a]]
        expect = sorted(wrong, key=lambda i: (-p[i].max(), i))[:rg.K_MISTAKES]
        title, cells = grids[f"gallery-r-m-{a + 1}-{attr}.png"]
        assert f"{attr} on val" in title and f"of {len(wrong)} wrong / {int((labels[:, a] >= 0).sum())} labelled" \
            in title
        assert [c[0] for c in cells] == [files[i] for i in expect]  # the photos themselves, in this order
        assert [[t for t, _ in c[1]] for c in cells] == [
            [f"true: {names[a][labels[i, a]]}", f"pred: {names[a][p[i].argmax()]}", f"p = {p[i].max():.2f}"]
            for i in expect]
        # the per-class table links each class's wrong / labelled count to the attribute's grid
        for c, name in enumerate(names[a]):
            n, w = int((labels[:, a] == c).sum()), sum(labels[i, a] == c for i in wrong)
            cell = f"[{w}/{n}](leaderboard_files/gallery-r-m-{a + 1}-{attr}.png)" if w else f"{w}/{n}"
            assert f"| {attr} | {name} | " in md and re.search(rf"\| {attr} \| {name} \| .* \| {re.escape(cell)} \|", md)
    # the rare-classes page: the K_RARE classes with fewest training images, first PER_RARE val images each
    counts = [np.bincount(ds.splits["train"].labels[:, a][ds.splits["train"].labels[:, a] >= 0], minlength=k)
              for a, k in enumerate(ds.num_classes)]
    ranked = sorted((counts[a][c], a, c) for a in range(2) for c in range(ds.num_classes[a])
                    if (labels[:, a] == c).any())[:rg.K_RARE]
    title, cells = grids["rare-r-m.png"]
    rows = [cells[i:i + rg.PER_RARE + 1] for i in range(0, len(cells), rg.PER_RARE + 1)]
    assert len(rows) == len(ranked)
    for (n, a, c), row in zip(ranked, rows):
        assert row[0][1][0][0] == names[a][c] and row[0][1][2][0].startswith(f"train {n}, ")
        shown = [i for i in range(len(labels)) if labels[i, a] == c][:rg.PER_RARE]
        assert [x[0] for x in row[1:] if x[0] is not None] == [files[i] for i in shown]
        right = [probs[i, edges[a]:edges[a + 1]].argmax() == c for i in shown]
        assert [x[1][0][0] for x in row[1:len(shown) + 1]] == ["right" if r else "WRONG" for r in right]
    assert "leaderboard_files/rare-r-m.png" in links


def test_gallery_of_an_unknown_entry_exits_2_naming_the_valid_ones(csv_runs, tmp_path, capsys):
    from bench.report import main
    with pytest.raises(SystemExit) as e:
        main(["--runs-dir", str(csv_runs[0]), "--out", str(tmp_path / "rep"), "--gallery", "r/nope"])
    assert e.value.code == 2
    assert "--gallery 'r/nope': no such entry; valid entries: r/m" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()  # nothing written


def test_the_report_builds_and_says_why_when_the_images_moved(csv_runs, tmp_path):
    runs, ds, _ = csv_runs
    moved = tmp_path / "ds"
    shutil.copytree(ds.root, moved)
    meta_path = tmp_path / "runs/r/m/run.json"
    shutil.copytree(runs, tmp_path / "runs")
    meta_path.write_text(meta_path.read_text().replace(str(ds.root), str(moved)))
    (moved / "img/00031.jpg").unlink()  # one val image gone
    md = build_report(tmp_path / "runs", tmp_path / "rep", quiet=True).read_text()
    why = [line for line in md.splitlines() if line.startswith("_No gallery for `r/m`")]
    assert len(why) == 1 and "00031.jpg" in why[0] and "cannot be opened" in why[0]
    assert "wrong on val" not in md and not list((tmp_path / "rep/leaderboard_files").glob("gallery-*"))
    links_resolve(md, tmp_path / "rep")
    shutil.rmtree(moved)  # the whole dataset gone
    md = build_report(tmp_path / "runs", tmp_path / "rep", quiet=True).read_text()
    assert "dataset folder does not exist" in md and "## Confusion matrices" in md


def test_gallery_of_a_trained_entry_beside_the_leaders(demo_runs, tiny_root, tmp_path, recorded):
    """On real runs: --gallery draws the named entry's grids too; the leader's are its val argmax mistakes."""
    import json

    import pandas as pd
    from bench.report import main
    main(["--runs-dir", str(demo_runs), "--out", str(tmp_path / "rep"), "--gallery", "default/resnet18"])
    md = (tmp_path / "rep/leaderboard.md").read_text()
    links_resolve(md, tmp_path / "rep")
    df = pd.read_csv(tmp_path / "rep/leaderboard.csv")
    leader = df[df["leader"]]["entry"].iloc[0]
    assert {f"### `{leader}`", "### `default/resnet18`"} <= set(md.splitlines())
    z = np.load(demo_runs / leader / "probs_val.npz")
    p, labels = z["plain"][:, :7], z["labels"][:, 0]  # texture
    wrong = np.flatnonzero(p.argmax(1) != labels)
    expect = sorted(wrong, key=lambda i: (-p[i].max(), i))[:rg.K_MISTAKES]
    val = (tiny_root / "split/val.txt").read_text().split()
    grid = next(cells for name, _, cells in recorded if name == f"gallery-{leader.replace('/', '-')}-1-texture.png")
    assert [c[0] for c in grid] == [tiny_root / val[i] for i in expect]
    assert json.loads((demo_runs / leader / "run.json").read_text())["data_root"] == str(tiny_root)


def test_a_grid_is_drawn_again_only_when_its_cells_photos_or_title_change(tmp_path):
    from PIL import Image
    photo = tmp_path / "a.jpg"
    Image.new("RGB", (30, 40), (200, 10, 10)).save(photo)
    out = tmp_path / "g.png"
    cells = [(photo, [("true: x", "black")]), (None, [])]

    def drawn():
        rg.draw_grid(cells, out, title, 2)
        return out.stat().st_ino, out.stat().st_mtime_ns

    title = "t"
    first = drawn()
    assert drawn() == first
    os.utime(photo, ns=(1, 1))  # the same name, another modification time: maybe another photo
    second = drawn()
    assert second != first and drawn() == second
    title = "t2"
    assert drawn() != second


def test_an_ensembles_gallery_counts_agree_with_its_accuracy_column(csv_runs, tmp_path):
    """An ensemble of two members at --tta plain,flip: its per-class accuracy column is its plain-view twin, and its
    gallery drew its TTA predictions, so the wrong / labelled count beside it disagreed (21 of 26 rows on the dev
    set). Both now read bench/reporting/predictions.py's main column."""
    from bench.artifacts import save_probs, write_json
    from bench.ensembling.ensemble import EnsembleSpec, make_ensemble
    _, ds, _ = csv_runs
    meta = json.loads((csv_runs[0] / "r/m/run.json").read_text())
    labels, n_test = ds.splits["val"].labels, len(ds.files("test"))
    rng = np.random.default_rng(1)

    def probs(n):  # seeded random probabilities: the flip view disagrees with the plain one on many images
        return np.concatenate([rng.dirichlet(np.ones(k), n) for k in ds.num_classes], 1)

    runs = tmp_path / "runs"
    for name in ("a", "b"):
        d = runs / f"r/{name}"
        d.mkdir(parents=True)
        save_probs(d / "probs_val.npz", plain=probs(len(labels)), flip=probs(len(labels)), labels=labels)
        save_probs(d / "probs_test.npz", plain=probs(n_test), flip=probs(n_test))
        write_json(meta, d / "run.json")
    make_ensemble(EnsembleSpec(runs_dir=runs, weights="uniform", views=["plain", "flip"], out=tmp_path / "sub",
                               name="e"), "cpu")
    z = np.load(runs / "_ensembles/e/probs_val.npz")
    assert (z["pred"] != z["pred_plain"]).any()  # the two columns differ: the test can tell them apart
    md = build_report(runs, tmp_path / "rep", quiet=True, gallery="_ensembles/e").read_text()
    lines = md.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| attribute | class |"))
    cols = [c.strip() for c in lines[head].strip("|").split("|")]
    acc, gal = cols.index("`_ensembles/e`"), cols.index("`_ensembles/e` wrong on val")
    table = itertools.takewhile(lambda line: line.startswith("| "), lines[head + 2:])
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    assert len(rows) == sum(ds.num_classes)
    for row in rows:  # the gallery's count agrees with the accuracy beside it, and both with pred_plain by hand
        wrong, n = map(int, re.match(r"\[?(\d+)/(\d+)", row[gal]).groups())
        assert row[acc] == ("n/a" if n == 0 else f"{(n - wrong) / n:.2f}"), row
        a = list(ds.attributes).index(row[0])
        of_c = labels[:, a] == list(ds.class_names[a]).index(row[1])
        assert (wrong, n) == (int((of_c & (z["pred_plain"][:, a] != labels[:, a])).sum()), int(of_c.sum())), row
