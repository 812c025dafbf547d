"""Mistakes you can see (bench/reporting/gallery.py): which images the galleries pick, in which order, and that the
report links them and survives a dataset that moved."""
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


def test_an_ensemble_shows_its_stored_rule_predictions_and_a_model_its_argmax():
    meta = {"num_classes": [2, 3], "views": ["plain"], "decision": "logit_adjusted"}
    plain = np.array([[.7, .3, .5, .3, .2], [.4, .6, .1, .1, .8]])
    rule = np.array([[1, 1], [1, 2]])  # the rule moved image 0's first attribute to the less probable class
    pred, conf, what = rg.entry_predictions("ensemble", meta, {"plain": plain, "pred": rule, "pred_plain": rule})
    assert pred.tolist() == rule.tolist() and conf.tolist() == [[.3, .3], [.6, .8]]
    assert "`logit_adjusted` predictions at views plain" in what and "main column" in what
    pred, conf, what = rg.entry_predictions("model", meta, {"plain": plain})
    assert pred.tolist() == [[0, 0], [1, 2]] and conf.tolist() == [[.7, .5], [.6, .8]] and "argmax" in what


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
