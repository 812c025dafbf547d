import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import permutation_test

from bench.reporting import plots as rp
from bench.report import main as report_main
from bench.reporting.leaderboard import build_report
from bench.reporting.plots import pareto_front

SECTIONS = ("## Leaderboard", "## Is the difference real?", "## Accuracy vs cost", "## Training curves",
            "## Class distribution and loss weights", "## Per-class accuracy", "## Confusion matrices")
# figure sizes in pixels: figsize (inches) x dpi 80 in report_plots
FIGURES = {"pareto.png": (800, 304), "curves.png": (800, 288), "class_distribution.png": (1040, 520),
           "confusion-default-resnet18.png": (1040, 640), "confusion-b-resnet18.png": (1040, 640)}


def by_hand(run_dir):
    """Predictions, per-image correct counts and scores from probs_val.npz, computed here with numpy alone."""
    meta = json.loads((run_dir / "run.json").read_text())
    z = np.load(run_dir / "probs_val.npz")
    labels, edges = z["labels"], np.cumsum([0, *meta["num_classes"]])
    pred = np.stack([z["plain"][:, edges[a]:edges[a + 1]].argmax(1) for a in range(6)], 1)
    right = pred == labels
    recall = [np.mean([right[labels[:, a] == c, a].mean() for c in np.unique(labels[:, a])]) for a in range(6)]
    return {"overall_acc": right.mean(), "texture": right[:, 0].mean(), "mean_class_acc": np.mean(recall),
            "per_image": right.sum(1)}


def test_report_renders_every_section_and_matches_artifacts(demo_runs, tmp_path):
    path = build_report(demo_runs, tmp_path / "rep", quiet=True)
    md = path.read_text()
    for section in SECTIONS:
        assert section in md
    for img, size in FIGURES.items():
        with Image.open(tmp_path / "rep/leaderboard_files" / img) as im:
            pixels = np.asarray(im.convert("RGB"))
        assert im.size == size and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # decodes, is drawn on
        assert f"](leaderboard_files/{img})" in md
    df = pd.read_csv(tmp_path / "rep/leaderboard.csv")
    assert set(df["entry"]) == {"default/resnet18", "b/resnet18", "majority baseline"}
    assert df["overall_acc"].is_monotonic_decreasing
    hand = {label: by_hand(demo_runs / label) for label in ("default/resnet18", "b/resnet18")}
    for label, h in hand.items():
        meta = json.loads((demo_runs / label / "run.json").read_text())
        row = df[df["entry"] == label].iloc[0]
        assert row["overall_acc"] == pytest.approx(h["overall_acc"], abs=1e-6)  # CSV keeps 6 digits
        assert row["mean_class_acc"] == pytest.approx(h["mean_class_acc"], abs=1e-6)  # CSV keeps 6 digits
        assert row["texture"] == pytest.approx(h["texture"], abs=1e-6)  # CSV keeps 6 digits
        assert row["params_M"] == pytest.approx(meta["params"] / 1e6, abs=0.01)
        assert row["ci_lo"] <= row["overall_acc"] <= row["ci_hi"]
        assert row["init"] == "scratch" and row["val_scoring"] == "last epoch (val chose nothing)"  # scratch recipe
    labels = np.load(demo_runs / "default/resnet18/probs_val.npz")["labels"]
    base = df[df["entry"] == "majority baseline"].iloc[0]
    counts = json.loads((demo_runs / "default/resnet18/run.json").read_text())["train_class_counts"]
    majority = np.array([int(np.argmax(c)) for c in counts])
    assert base["overall_acc"] == pytest.approx((labels == majority).mean())
    assert base["val_scoring"] == "unbiased (fit on train counts only)"
    # significance: scipy's permutation test on per-image correct counts, then Holm over the 2 comparisons by hand
    leader = df.iloc[0]["entry"]
    per_image = {**{k: h["per_image"] for k, h in hand.items()}, "majority baseline": (labels == majority).sum(1)}
    rest = df.iloc[1:]
    ref = [permutation_test((per_image[e], per_image[leader]), lambda u, v, axis: np.mean(u - v, axis=axis),
                            permutation_type="samples", n_resamples=9999, vectorized=True,
                            random_state=0).pvalue for e in rest["entry"]]
    assert rest["p_sign_flip"].tolist() == pytest.approx(ref, abs=0.03)
    lo, hi = sorted(rest["p_sign_flip"])
    holm = {lo: min(1, 2 * lo), hi: min(1, max(2 * lo, hi))}
    assert rest["p_holm"].tolist() == pytest.approx([holm[p] for p in rest["p_sign_flip"]], abs=1e-5)
    for e, p in zip(rest["entry"], rest["p_holm"]):  # the significance table's verdict uses the adjusted p
        row = next(line for line in md.splitlines() if line.startswith(f"| `{e}` | "))
        assert row.endswith(f"| {'yes' if p < 0.05 else 'no'} |")
    assert "Holm-Bonferroni" in md and "McNemar" not in md
    assert "train s (sum of epochs)" in md and "img/s (median epoch)" in md and "| val score is |" in md


def test_the_report_names_the_classes_too_rare_for_class_average_intervals(demo_runs, tmp_path):
    md = build_report(demo_runs, tmp_path / "rep", quiet=True).read_text()
    meta = json.loads((demo_runs / "default/resnet18/run.json").read_text())
    labels = np.load(demo_runs / "default/resnet18/probs_val.npz")["labels"]
    few = []  # counted here, class by class: labelled val images of each class, those with 1 to 9
    for a, (attr, names) in enumerate(zip(meta["attributes"], meta["class_names"])):
        for c, name in enumerate(names):
            n = int((labels[:, a] == c).sum())
            if 0 < n < 10:
                few.append((n, f"{name} ({attr})"))
    assert few  # 40 val images over 26 classes
    line = next(x for x in md.splitlines() if x.startswith("Classes with fewer than 10 labelled images here: "))
    listed = line.removeprefix("Classes with fewer than 10 labelled images here: ").split(". The class average")[0]
    assert listed == ", ".join(f"{name} {n}" for n, name in sorted(few, key=lambda x: (x[0], x[1])))
    assert "trust p" in line


def test_a_delta_interval_that_contradicts_its_p_says_so():
    """Δ rows whose 95% interval excludes 0 while the unadjusted sign-flip p is >= 0.05 (a rare class's few images
    decide it) are marked; rows where the two agree are not."""
    from bench.reporting.leaderboard import DISAGREE, render_significance
    rows = [("leader", True, 0.0, None, None, None), ("disagree", False, -0.0276, -0.0457, -0.0105, 0.26),
            ("agree-excl", False, -0.03, -0.05, -0.01, 0.001), ("agree-incl", False, -0.01, -0.03, 0.01, 0.4),
            ("above", False, 0.02, 0.001, 0.04, 0.05)]
    df = pd.DataFrame(rows, columns=["entry", "leader", "delta", "delta_lo", "delta_hi", "p_sign_flip"])
    df["p_holm"] = df["p_sign_flip"]
    df["kind"] = "model"
    cells = {line.split("|")[1].strip().strip("`"): line.split("|")[2].strip()
             for line in render_significance(df).splitlines()[2:]}
    assert cells == {"disagree": "-0.0276 [-0.0457, -0.0105]" + DISAGREE, "agree-excl": "-0.0300 [-0.0500, -0.0100]",
                     "agree-incl": "-0.0100 [-0.0300, +0.0100]", "above": "+0.0200 [+0.0010, +0.0400]" + DISAGREE}


def test_a_p_just_below_the_level_is_not_printed_as_the_level():
    """The significance table printed adjusted p 0.0496 as "0.05" beside "yes" (different at 5%), and a random-flip
    p of 500/10001 as "0.05" too: the printed p must stay below 0.05 when the verdict used p < 0.05."""
    from bench.reporting.leaderboard import render_significance
    df = pd.DataFrame([("leader", True, 0.0, None, None, None, None), ("near", False, -0.02, -0.04, -0.001, 500 / 10001,
                                                                    0.0496)],
                      columns=["entry", "leader", "delta", "delta_lo", "delta_hi", "p_sign_flip", "p_holm"])
    df["kind"] = "model"
    cells = next(line for line in render_significance(df).splitlines() if "`near`" in line).split("|")
    assert [c.strip() for c in cells[3:4]] == ["0.049995"]
    assert [c.strip() for c in cells[-3:-1]] == ["0.0496", "yes"]


def test_confusion_figure_holds_the_confusion_counts(tmp_path, monkeypatch):
    figs = []
    save = rp._save
    monkeypatch.setattr(rp, "_save", lambda fig, path, key: figs.append(fig.axes) or save(fig, path, key))
    names = [[f"c{i}" for i in range(k)] for k in (3, 2, 2, 2, 2, 2)]
    labels = np.array([[0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [2, 1, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0]])
    pred = np.array([[0, 0, 0, 0, 0, 0], [2, 1, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0]])
    rp.confusion(labels, pred, names, tmp_path / "c.png", "t")
    texture = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 2]])  # rows true, columns predicted, counted by hand
    assert (np.asarray(figs[0][0].images[0].get_array()) == texture).all()
    assert (np.asarray(figs[0][1].images[0].get_array()) == [[2, 0], [1, 1]]).all()


def test_stale_figures_and_entries_disappear_on_rebuild(demo_runs, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(demo_runs, runs)
    files = tmp_path / "rep/leaderboard_files"
    build_report(runs, tmp_path / "rep", quiet=True)
    assert (files / "confusion-b-resnet18.png").exists()
    shutil.rmtree(runs / "b")
    md = build_report(runs, tmp_path / "rep", quiet=True).read_text()
    assert not (files / "confusion-b-resnet18.png").exists() and (files / "confusion-default-resnet18.png").exists()
    assert "b/resnet18" not in md and "b/resnet18" not in (tmp_path / "rep/leaderboard.csv").read_text()
    galleries = set(re.findall(r"leaderboard_files/((?:gallery|rare)-[^)]+)", md))  # the leader's, now default's
    assert galleries and all(re.fullmatch(r"(gallery-default-resnet18-\d-[a-z]+|rare-default-resnet18)\.png", g)
                             for g in galleries)
    assert sorted(f.name for f in files.iterdir()) == sorted(set(FIGURES) - {"confusion-b-resnet18.png"} | galleries)


def test_a_rebuild_keeps_the_figures_whose_inputs_are_unchanged_and_redraws_the_others(demo_runs, tmp_path):
    from bench.artifacts import read_run, write_run
    runs = tmp_path / "runs"
    shutil.copytree(demo_runs, runs)
    files = tmp_path / "rep/leaderboard_files"

    def written():  # an atomic rewrite replaces the file: a new inode and mtime
        return {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files.iterdir()}

    build_report(runs, tmp_path / "rep", quiet=True)
    first = written()
    assert set(FIGURES) <= set(first)
    build_report(runs, tmp_path / "rep", quiet=True)
    assert written() == first  # nothing changed: nothing drawn again
    # b's predictions change (its val scores replaced by seeded random ones): its confusion matrix and the accuracy-
    # vs-cost figure are redrawn; the leader's confusion matrix and the class distribution are kept
    z = dict(np.load(runs / "b/resnet18/probs_val.npz"))
    z["plain"] = np.random.default_rng(0).random(z["plain"].shape)
    np.savez_compressed(runs / "b/resnet18/probs_val.npz", **z)
    write_run(read_run(runs / "b/resnet18").meta, runs / "b/resnet18")  # as a run that wrote them would record them
    (files / "curves.png").write_bytes((files / "curves.png").read_bytes()[:100])  # truncated: drawn again
    build_report(runs, tmp_path / "rep", quiet=True)
    now = written()
    changed = {name for name in FIGURES if now[name] != first[name]}
    assert changed == {"confusion-b-resnet18.png", "pareto.png", "curves.png"}
    with Image.open(files / "curves.png") as im:
        assert im.size == FIGURES["curves.png"]
        im.load()


def test_default_report_folder_belongs_to_the_runs_folder(demo_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(demo_runs, tmp_path / "exp/runs")
    shutil.copytree(demo_runs, tmp_path / "other")
    assert build_report(tmp_path / "exp/runs", quiet=True) == tmp_path / "exp/reports/leaderboard.md"
    assert build_report("other", quiet=True) == Path("other/_report/leaderboard.md")
    assert (tmp_path / "other/_report/leaderboard.md").exists()
    assert not (tmp_path / "reports").exists()  # the working folder's leaderboard is left alone
    shutil.copytree(demo_runs, tmp_path / "runs")
    assert build_report("runs", quiet=True) == Path("reports/leaderboard.md")  # the default: runs/ -> reports/


def test_same_artifacts_same_report(demo_runs, tmp_path):
    a = build_report(demo_runs, tmp_path / "a", quiet=True).read_text()
    b = build_report(demo_runs, tmp_path / "b", quiet=True).read_text()
    assert a == b
    assert (tmp_path / "a/leaderboard.csv").read_text() == (tmp_path / "b/leaderboard.csv").read_text()


def test_partial_runs_are_listed_not_ranked(demo_runs, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(demo_runs, runs)
    meta_path = runs / "b/resnet18/run.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "status": "training"}))
    (runs / "default/resnet18/probs_val.npz").unlink()
    with pytest.raises(SystemExit) as e:
        report_main(["--runs-dir", str(runs), "--out", str(tmp_path / "rep")])
    assert e.value.code == 1 and "nothing to rank" in capsys.readouterr().err
    md = (tmp_path / "rep/leaderboard.md").read_text()
    assert "## Not on the leaderboard" in md
    assert "`b/resnet18`: still training (2/2 epochs done)" in md
    assert "`default/resnet18`: no val probabilities" in md
    assert "No finished runs" in md


def test_report_without_runs_fails_loudly(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        report_main(["--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")])
    assert e.value.code == 1 and "no runs under" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()


def test_pareto_front():
    cost = np.array([1.0, 2.0, 3.0, 4.0])
    acc = np.array([0.5, 0.4, 0.7, 0.6])
    assert pareto_front(cost, acc).tolist() == [0, 2]


def test_val_scoring_says_whether_val_chose_the_epoch():
    from bench.reporting.leaderboard import Entry, val_scoring
    entry = lambda select, **meta: Entry("x", "model", {"config": {"recipe": {"select": select}}, **meta},  # noqa
                                         None, None, {})
    assert val_scoring(entry("overall_acc")) == "epoch selected on val (optimistic)"
    assert val_scoring(entry("last")) == "last epoch (val chose nothing)"
    assert val_scoring(entry("last", from_study="s")) == "last epoch; tuned params selected on val (optimistic)"


def test_a_refit_of_tuned_parameters_is_still_called_optimistic():
    """The refit check came before the from-study check: a refit of a --from-study run read 'val chose nothing'."""
    from bench.reporting.leaderboard import Entry, val_scoring
    entry = lambda select, **meta: Entry("x", "model", {"config": {"recipe": {"select": select}}, **meta},  # noqa
                                         None, None, {})
    refit = {"epochs": 3}
    assert val_scoring(entry("last", refit=refit)) == \
        "last epoch (val chose nothing); test predictions from a refit on train + val (3 epochs)"
    assert val_scoring(entry("last", refit=refit, from_study="s")) == \
        "last epoch; tuned params selected on val (optimistic); test predictions from a refit on train + val (3 epochs)"
    assert val_scoring(entry("overall_acc", refit=refit, from_study="s")) == \
        "epoch and tuned params selected on val (optimistic); test predictions from a refit on train + val (3 epochs)"
    kfold = {"k": 5, "oof_optimistic": False}
    assert val_scoring(entry("last", kfold=kfold)) == \
        "out-of-fold (5 folds over train + val): last epoch, no image predicted by a model that saw or selected on it"
    assert val_scoring(entry("last", kfold=kfold, from_study="s")) == "out-of-fold (5 folds over train + val): " \
        "last epoch; tuned params selected on val, whose images are in the pool (optimistic)"


def test_an_ensemble_of_last_epoch_members_is_not_called_selected_on_val():
    """Every ensemble row used to say 'members selected on val (optimistic)', also when each member kept its last
    epoch (the default recipes) or was a k-fold member: a false statement on the leaderboard."""
    from bench.reporting.leaderboard import Entry, val_scoring
    member = lambda label, select: Entry(label, "model", {"config": {"recipe": {"select": select}}},  # noqa
                                         None, None, {})
    ens = Entry("_ensembles/e", "ensemble", {"val_scoring": "5-fold CV", "members": ["r/a", "r/b"]}, None, None, {})
    last = {"r/a": member("r/a", "last"), "r/b": member("r/b", "last")}
    assert val_scoring(ens, last) == "5-fold CV; members kept their last epoch (chose nothing on these images)"
    mixed = {**last, "r/b": member("r/b", "overall_acc")}
    assert val_scoring(ens, mixed) == "5-fold CV; members selected on val (optimistic)"
    assert val_scoring(ens, {"r/a": last["r/a"]}) == "5-fold CV; members selected on val (optimistic)"  # b unknown


def test_summary_line_names_the_target_metric_and_its_value(demo_runs, tmp_path, capsys):
    """The summary used to print the leader's overall accuracy beside a leader chosen on the class average."""
    import pandas as pd
    from bench.reporting.leaderboard import build_report
    build_report(demo_runs, tmp_path / "rep", metric="class")
    df = pd.read_csv(tmp_path / "rep/leaderboard.csv")
    leader = df.loc[df["class_avg_acc"].idxmax()]
    assert f"leader `{leader['entry']}` class_avg_acc {leader['class_avg_acc']:.4f})" in capsys.readouterr().out


K = (7, 3, 3, 4, 6, 3)


def one_hot(pred: np.ndarray) -> np.ndarray:
    return np.concatenate([np.eye(k)[pred[:, a]] for a, k in enumerate(K)], 1).astype(np.float32)


def fake_run(runs: Path, label: str, pred: np.ndarray, labels: np.ndarray, flip: np.ndarray | None = None,
             fold: np.ndarray | None = None, **meta):
    """A finished run folder whose val probabilities are the one-hot `pred` (and `flip`, default the same); `fold`
    makes it a k-fold member's out-of-fold file."""
    from bench.artifacts import save_probs, write_json
    d = runs / label
    d.mkdir(parents=True)
    save_probs(d / "probs_val.npz", plain=one_hot(pred), flip=one_hot(pred if flip is None else flip), labels=labels,
               **({} if fold is None else {"fold": fold}))
    write_json({"kind": "model", "status": "done", "num_classes": list(K), "dataset": "fp",
                "config": {"dataset": "fp", "recipe": {"select": "last"}},
                "class_names": [[f"c{c}" for c in range(k)] for k in K], **meta}, d / "run.json")
    return d


def skewed(n=40, rare=10):
    """Labels: the first n - rare images class 0 in every attribute, the rest cycle through the other classes."""
    labels = np.zeros((n, len(K)), np.int64)
    for a, k in enumerate(K):
        labels[n - rare:, a] = 1 + np.arange(rare) % (k - 1)
    return labels


def test_the_method_says_what_the_class_average_and_holm_cover(tmp_path):
    """With classes absent from the scored images the method still said "accuracy of each of the 26 classes" and
    weighted by 1 / (26 x images of its class), while the metric and its test average over the classes present:
    skewed(40, 3) leaves 4 + 3 + 3 + 4 + 4 + 3 = 21 of the 26 classes (counted by hand from its cycle). The same
    section promised Holm's 5% per table though the leader is picked on the images it is compared on."""
    from bench.reporting.leaderboard import build_report
    labels = skewed(40, 3)
    fake_run(tmp_path / "runs", "r/m", labels, labels)
    md = build_report(tmp_path / "runs", tmp_path / "rep", quiet=True).read_text()
    assert "accuracy of each of the 21 classes present among the scored images (of 26" in md
    assert "by 1 / (21 x images of its class)" in md and "26 x images" not in md
    # and Holm's 5% is not promised where the leader was picked on the same images
    assert "for comparisons fixed in advance; here the leader was itself picked on these images" in md
    assert "<= 5% per table)" not in md


@pytest.mark.parametrize("linked", ["_report", "_report/leaderboard_files"])
def test_a_report_folder_a_runs_folder_links_elsewhere_is_not_written(tmp_path, linked):
    """A runs folder from elsewhere holding `_report/leaderboard_files` (or `_report`) as a link to the user's own
    folder: a rebuild wrote its figures there and deleted every PNG it did not link. Now refused before any write;
    the user's files stay, bench.report exits 2 naming the link, and the commands that refresh the report warn."""
    from bench.report import main as report_main
    from bench.reporting.leaderboard import ReportFolderError, build_report, refresh_report
    labels = skewed()
    runs = tmp_path / "shared-runs"
    fake_run(runs, "r/m", labels, labels)
    mine = tmp_path / "my-pictures"
    (mine / "leaderboard_files").mkdir(parents=True)
    (mine / "leaderboard_files/holiday.png").write_bytes(b"not the suite's")
    if linked == "_report":
        (runs / "_report").symlink_to(mine)
    else:
        (runs / "_report").mkdir()
        (runs / "_report/leaderboard_files").symlink_to(mine / "leaderboard_files")
    with pytest.raises(ReportFolderError, match="is a link"):
        build_report(runs, quiet=True)
    assert refresh_report(runs) is None
    with pytest.raises(SystemExit) as e:
        report_main(["--runs-dir", str(runs)])
    assert e.value.code == 2
    assert sorted(p.name for p in mine.rglob("*")) == ["holiday.png", "leaderboard_files"]
    # the same folder as the user's own report folder outside the runs folder is theirs to link
    (tmp_path / "rep").symlink_to(mine)
    if linked == "_report":
        build_report(runs, tmp_path / "rep", quiet=True)
        assert (mine / "leaderboard.md").is_file()


def test_the_summary_line_names_the_leader_on_the_target_whatever_the_sort(tmp_path, capsys):
    """With --sort the summary printed the first row in sort order as the leader."""
    labels = skewed()
    majority = np.zeros_like(labels)  # 30/40 right, class average low
    balanced = labels.copy()
    balanced[:20] = 1  # the 10 rare images and 10 of the 30 common ones right: 20/40, class average high
    fake_run(tmp_path / "runs", "r/common", majority, labels)
    fake_run(tmp_path / "runs", "r/rare", balanced, labels)
    build_report(tmp_path / "runs", tmp_path / "rep", sort="class_avg_acc", metric="overall")
    df = pd.read_csv(tmp_path / "rep/leaderboard.csv")
    assert df["entry"].tolist() == ["r/rare", "r/common"]  # rows in --sort order
    assert df.loc[df["leader"], "entry"].tolist() == ["r/common"]  # the leader on overall accuracy
    assert "leader `r/common` overall_acc 0.7500)" in capsys.readouterr().out


def test_the_metric_a_command_names_reaches_the_leaderboard_and_stays(demo_runs, tmp_path, capsys):
    """bench.ensemble --metric class printed 'target: class' and then wrote a leaderboard on overall accuracy."""
    from bench.ensemble import main as ensemble_main
    runs = tmp_path / "runs"
    shutil.copytree(demo_runs, runs)
    md = tmp_path / "reports/leaderboard.md"
    ensemble_main(["--runs-dir", str(runs), "--out", str(tmp_path / "sub"), "--metric", "class"])
    assert "Target metric: `class_avg_acc` (`--metric class`)" in md.read_text()
    assert "Δ class_avg_acc vs leader" in md.read_text()
    report_main(["--runs-dir", str(runs)])  # a later command that names no metric keeps it
    assert "Target metric: `class_avg_acc` (`--metric class`, named by an earlier command" in md.read_text()
    report_main(["--runs-dir", str(runs), "--metric", "overall"])
    assert "Target metric: `overall_acc` (`--metric overall`)" in md.read_text()
    report_main(["--runs-dir", str(runs)])
    assert "Δ overall_acc vs leader" in md.read_text()


def test_the_kfold_majority_baseline_is_fitted_per_fold_and_named_apart(tmp_path):
    """The k-fold baseline predicted the pool's majority, counting the fold it scored, while its row said 'fit on
    train counts only'; and both baselines were called 'majority baseline' (one per-class column twice)."""
    labels = np.zeros((20, 6), np.int64)
    fold = np.repeat([0, 1], 10)
    labels[:10, 0] = 1  # fold 0: texture class 1 (pool majority: 10 of 20)
    labels[10:16, 0], labels[16:, 0] = 0, 2  # fold 1: 6 x class 0, 4 x class 2
    runs = tmp_path / "runs"
    fake_run(runs, "k/a", labels, labels, fold=fold, scored_on="oof-k2-x", kfold={"k": 2, "oof_optimistic": False},
             train_class_counts=[np.bincount(labels[:, a], minlength=k).tolist() for a, k in enumerate(K)])
    val = skewed()
    fake_run(runs, "r/a", val, val, train_class_counts=[[9] + [1] * (k - 1) for k in K])
    md = build_report(runs, tmp_path / "rep", quiet=True).read_text()
    df = pd.read_csv(tmp_path / "rep/leaderboard.csv").set_index("entry")
    # fold 0 gets fold 1's majority (class 0), fold 1 gets fold 0's (class 1): texture always wrong, the rest right
    assert df.loc["majority baseline (oof-k2-x)", "overall_acc"] == pytest.approx(5 / 6)  # the pool's gave 11/12
    assert df.loc["majority baseline (oof-k2-x)", "val_scoring"] == \
        "out-of-fold (fit per fold on the other folds' counts)"
    assert df.loc["majority baseline", "overall_acc"] == pytest.approx(0.75)  # val: 30 of 40 are class 0
    assert df.loc["majority baseline", "val_scoring"] == "unbiased (fit on train counts only)"
    header = next(line for line in md.splitlines() if line.startswith("| attribute | class |"))
    assert header.count("`majority baseline`") == 1 and header.count("`majority baseline (oof-k2-x)`") == 1


def test_the_ensemble_is_compared_with_its_members_like_with_like(tmp_path):
    """The ensemble's row scored plain+flip views while the members' main scores were plain, so 'Is the difference
    real?' credited the ensemble with the members' missing flip TTA. Now plain meets plain and TTA meets TTA."""
    from bench.artifacts import save_probs
    from bench.ensembling.ensemble import EnsembleSpec, make_ensemble
    rng = np.random.default_rng(0)
    n = 80
    labels = np.stack([rng.integers(0, k, n) for k in K], 1)

    def probs(strength):  # noisy probabilities that favour the label on some images
        logits = [rng.normal(size=(n, k)) + strength * np.eye(k)[labels[:, a]] for a, k in enumerate(K)]
        return np.concatenate([np.exp(z) / np.exp(z).sum(1, keepdims=True) for z in logits], 1).astype(np.float32)

    runs, members = tmp_path / "runs", {}
    for name, strength in (("a", 1.0), ("b", 0.6)):
        members[name] = {"plain": probs(strength), "flip": probs(strength)}
        d = fake_run(runs, f"r/{name}", labels, labels, data_root=str(tmp_path), params=1, gflops=1.0)
        save_probs(d / "probs_val.npz", **members[name], labels=labels)
        save_probs(d / "probs_test.npz", plain=probs(0)[:5], flip=probs(0)[:5])
    make_ensemble(EnsembleSpec(runs_dir=runs, weights="uniform", out=tmp_path / "sub", name="e"), "cpu")
    build_report(runs, tmp_path / "rep", quiet=True)
    df = pd.read_csv(tmp_path / "rep/leaderboard.csv").set_index("entry")

    def hand(p):  # per-attribute argmax, overall accuracy
        edges = np.cumsum([0, *K])
        return np.mean(np.stack([p[:, edges[a]:edges[a + 1]].argmax(1) for a in range(6)], 1) == labels)

    tta = {m: (v["plain"] + v["flip"]) / 2 for m, v in members.items()}
    assert df.loc["r/a", "overall_acc"] == pytest.approx(hand(members["a"]["plain"]), abs=1e-6)
    assert df.loc["r/a", "tta_overall_acc"] == pytest.approx(hand(tta["a"]), abs=1e-6)
    ens_plain = hand((members["a"]["plain"] + members["b"]["plain"]) / 2)
    ens_tta = hand((tta["a"] + tta["b"]) / 2)
    assert df.loc["_ensembles/e", "overall_acc"] == pytest.approx(ens_plain, abs=1e-6)  # its plain-view twin
    assert df.loc["_ensembles/e", "tta_overall_acc"] == pytest.approx(ens_tta, abs=1e-6)
    assert (df.loc["_ensembles/e", "views"], df.loc["_ensembles/e", "tta_views"]) == ("plain", "plain+flip")
    for col, a_score, e_score in (("", hand(members["a"]["plain"]), ens_plain), ("tta_", hand(tta["a"]), ens_tta)):
        leader, other = ("r/a", "_ensembles/e") if a_score > e_score else ("_ensembles/e", "r/a")
        assert df.loc[leader, f"{col}leader"]
        assert df.loc[other, f"{col}delta"] == pytest.approx(-abs(a_score - e_score), abs=1e-6)


def test_bench_run_and_bench_tune_pass_their_metric_to_the_leaderboard(demo_runs, tiny_root, tmp_path, monkeypatch):
    """bench.run and bench.tune rebuilt the leaderboard without the metric they were given."""
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from test_tune import fake_training
    from bench.run import main as run_main
    from bench.tune import main as tune_main
    home = tmp_path / "w"
    shutil.copytree(demo_runs, home / "runs")
    md = home / "reports/leaderboard.md"
    tiny = ["--data", str(tiny_root), "--workdir", str(home), "--size", "32", "--batch-size", "16", "--pretrained",
            "none", "--no-progress"]
    run_main(["--models", "resnet18", "--epochs", "1", "--run", "c", "--metric", "class", *tiny])
    assert "Target metric: `class_avg_acc` (`--metric class`)" in md.read_text()
    run_main(["--models", "resnet18", "--epochs", "1", "--run", "c", *tiny])  # names none: the target stays
    assert "Target metric: `class_avg_acc` (`--metric class`, named by an earlier command" in md.read_text()
    fake_training(monkeypatch)
    tune_main(["--trials", "1", "--epochs", "1", "--metric", "overall", *tiny])
    assert "Target metric: `overall_acc` (`--metric overall`)" in md.read_text()
    tune_main(["--trials", "2", "--epochs", "1", "--metric", "both", "--study", "b", *tiny])  # no leaderboard metric
    assert "Target metric: `overall_acc` (`--metric overall`, named by an earlier command" in md.read_text()


def test_an_attribute_named_like_a_leaderboard_column_keeps_both(tmp_path):
    """A CSV dataset's attribute called `n` (or `rank`, `device`) overwrote the leaderboard's own column."""
    from bench.artifacts import save_probs, write_json
    labels = np.array([[0, 1], [1, 1], [1, 0], [0, 0]])
    pred = np.array([[0, 1], [1, 0], [1, 0], [1, 0]])  # n: 3 of 4 right, rank: 3 of 4 right
    d = tmp_path / "runs/r/m"
    d.mkdir(parents=True)
    probs = np.concatenate([np.eye(2)[pred[:, 0]], np.eye(2)[pred[:, 1]]], 1)
    save_probs(d / "probs_val.npz", plain=probs, flip=probs, labels=labels)
    write_json({"kind": "model", "status": "done", "num_classes": [2, 2], "attributes": ["n", "rank"],
                "dataset": "fp", "config": {"dataset": "fp", "recipe": {"select": "last"}},
                "class_names": [["a", "b"], ["c", "d"]]}, d / "run.json")
    md = build_report(tmp_path / "runs", tmp_path / "rep", quiet=True).read_text()
    row = pd.read_csv(tmp_path / "rep/leaderboard.csv").iloc[0]
    assert row["n"] == 4 and row["rank"] == 1  # the leaderboard's own columns
    assert row["acc_n"] == pytest.approx(3 / 4) and row["acc_rank"] == pytest.approx(3 / 4)  # the attributes'
    header = next(line for line in md.splitlines() if line.startswith("| # | entry | init |"))  # every column
    assert header.count("| n |") == 2 and "| rank |" in header  # the count and the attribute, each shown


def two_member_ensemble(tmp_path, views=("plain", "flip")):
    """r/a, r/b (noisy probabilities on 80 images) and their uniform ensemble `_ensembles/e` at `views`."""
    from bench.artifacts import save_probs
    from bench.ensembling.ensemble import EnsembleSpec, make_ensemble
    rng = np.random.default_rng(0)
    n = 80
    labels = np.stack([rng.integers(0, k, n) for k in K], 1)

    def probs(strength):
        logits = [rng.normal(size=(n, k)) + strength * np.eye(k)[labels[:, a]] for a, k in enumerate(K)]
        return np.concatenate([np.exp(z) / np.exp(z).sum(1, keepdims=True) for z in logits], 1).astype(np.float32)

    runs = tmp_path / "runs"
    for name, strength in (("a", 1.0), ("b", 0.6)):
        d = fake_run(runs, f"r/{name}", labels, labels, data_root=str(tmp_path), params=1, gflops=1.0,
                     finished="2026-01-01 00:00:00")
        save_probs(d / "probs_val.npz", plain=probs(strength), flip=probs(strength), labels=labels)
        save_probs(d / "probs_test.npz", plain=probs(0)[:5], flip=probs(0)[:5])
    make_ensemble(EnsembleSpec(runs_dir=runs, weights="uniform", views=list(views), out=tmp_path / "sub", name="e"),
                  "cpu")
    return runs


def test_an_ensemble_whose_member_was_retrained_is_not_ranked(tmp_path):
    """bench.predict, export and distill refuse an entry whose members were retrained after it was written; the
    leaderboard kept ranking it (#2, with Δ and p) beside the retrained member's new scores. It now asks the same
    check (bench/ensembling/entries.py read_entry) and lists the entry, with the reason, instead of ranking it."""
    import json as _json
    runs = two_member_ensemble(tmp_path)
    build_report(runs, tmp_path / "rep", quiet=True)
    assert "_ensembles/e" in set(pd.read_csv(tmp_path / "rep/leaderboard.csv")["entry"])  # ranked while current
    meta_path = runs / "r/b/run.json"
    meta = _json.loads(meta_path.read_text())
    meta_path.write_text(_json.dumps({**meta, "finished": "2026-02-01 00:00:00"}))  # bench.run --force: retrained
    md = build_report(runs, tmp_path / "rep", quiet=True).read_text()
    df = pd.read_csv(tmp_path / "rep/leaderboard.csv")
    assert set(df["entry"]) == {"r/a", "r/b"}
    note = next(line for line in md.splitlines() if line.startswith("- `_ensembles/e`: not ranked: "))
    assert "member(s) retrained after" in note and "r/b" in note and "--force" in note
    assert [line for line in md.splitlines() if "_ensembles/e" in line] == [note]  # in no table, no verdict
    assert "1 run(s) not ranked, listed under *Not on the leaderboard*" in md


def summary_rows(md: str) -> list[list[str]]:
    """The cells of the summary table: the first table of the report."""
    lines = md.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| # | entry |"))
    table = [line for line in lines[head + 2:]][:next(i for i, line in enumerate(lines[head + 2:])
                                                       if not line.startswith("| "))]
    return [[c.strip() for c in line.strip("|").split("|")] for line in table]


def test_the_leaderboard_opens_with_its_verdict_and_a_summary_table(tmp_path):
    """Hand-made predictions on 40 images (30 of class 0 in every attribute, 10 rare): an ensemble right on every
    cell, its two members each wrong on 10 images in one attribute, another model wrong on one cell, and the
    majority baseline (right on the 30 common images). Its first lines are the verdict and the ranked summary."""
    from bench.artifacts import save_probs, write_json
    labels = skewed()
    counts = [[30] + [2] * (k - 1) for k in K]  # class 0 the most frequent in training: the baseline predicts it
    runs = tmp_path / "runs"
    a, b, close = labels.copy(), labels.copy(), labels.copy()
    a[:10, 0] = (labels[:10, 0] + 1) % K[0]  # 10 images wrong in texture
    b[10:20, 1] = (labels[10:20, 1] + 1) % K[1]  # 10 others wrong in sleeve
    close[20, 2] = (labels[20, 2] + 1) % K[2]  # one cell wrong
    for name, pred in (("r/a", a), ("r/b", b), ("r/close", close)):
        fake_run(runs, name, pred, labels, train_class_counts=counts, gflops=1.5, train_time_s=100)
    d = runs / "_ensembles/e"
    d.mkdir(parents=True)
    save_probs(d / "probs_val.npz", plain=one_hot(labels), pred=labels, pred_plain=labels, labels=labels)
    write_json({"kind": "ensemble", "status": "done", "members": ["r/a", "r/b"], "views": ["plain"],
                "num_classes": list(K), "dataset": "fp", "config": {"dataset": "fp"}, "gflops": 3.0,
                "train_time_s": 200, "val_scoring": "in-sample (uniform weights, argmax: nothing fitted)",
                "weighting": "uniform", "class_names": [[f"c{c}" for c in range(k)] for k in K]}, d / "run.json")
    md = build_report(runs, tmp_path / "rep", quiet=True).read_text()
    df = pd.read_csv(tmp_path / "rep/leaderboard.csv").set_index("entry")
    p = df["p_holm"]
    assert p[["r/a", "r/b", "majority baseline"]].max() < 0.05 and p["r/close"] == 1  # 10 images vs 1 cell
    lines = md.splitlines()
    assert lines[0] == "# fashion-bench leaderboard" and lines[1] == ""
    behind = p[["r/a", "r/b", "majority baseline"]].max()
    assert lines[2] == (
        "`_ensembles/e` leads on overall accuracy (2023 challenge) with **1.0000 [1.000, 1.000]** (plain view, 40 "
        "val images); `r/close` (adjusted p 1) is not distinguishable from it; `r/a`, `r/b` and `majority baseline` "
        f"are behind it (adjusted p <= {behind:.2g}); it beats each of its 2 members (adjusted p <= "
        f"{p[['r/a', 'r/b']].max():.2g}).")
    rows = summary_rows(md)
    assert [(r[0], r[1]) for r in rows] == [("1", "`_ensembles/e`"), ("2", "`r/close`"), ("3", "`r/a`"),
                                            ("4", "`r/b`"), ("5", "`majority baseline`")]
    assert len(rows[0]) <= 8
    assert rows[0][2].startswith("**1.0000** [1.000, 1.000]") and rows[0][3] == "leader"
    assert rows[1][2].startswith(f"**{1 - 1 / 240:.4f}**") and rows[1][3] == "-0.0042 (p 1): not distinguishable"
    assert rows[2][3] == f"-0.0417 (p {p['r/a']:.2g}): behind"  # 10 of 240 cells
    assert rows[4][2].startswith("**0.7500**") and rows[4][3].startswith("-0.2500 (p ")  # 60 of 240 cells
    assert [r[5] for r in rows] == ["ensemble, nothing fitted", "last epoch", "last epoch", "last epoch",
                                    "train counts"]
    assert rows[0][6] == "3.00 GFLOPs, 200 s" and rows[4][6] == "-"
    assert "Against the majority baseline" not in md  # every interval above the baseline's 0.75, no random init
    # every column and table is still there, below, and the method after the tables
    for section in ("## Leaderboard: validation split (n = 40 images)", "## Is the difference real?",
                    "## How to read this report"):
        assert section in md
    assert md.index("## Is the difference real?") < md.index("## How to read this report")
    assert "*ensemble, nothing fitted*: " in md and "*train counts*: " in md and "*tuned on val*" not in md



def test_an_ensemble_at_views_plain_is_in_the_tta_comparison_at_those_views(tmp_path):
    """An ensemble made with --tta plain had no TTA column, so the TTA table's "leader" was a model that the
    ensemble, at its own declared views, beats. Its one column is its TTA column too."""
    from bench.artifacts import save_probs, write_json
    labels = skewed()
    runs = tmp_path / "runs"
    m = labels.copy()
    m[:10, 0] = (labels[:10, 0] + 1) % K[0]  # wrong on 10 images, at plain and at plain+flip
    fake_run(runs, "r/m", m, labels)
    d = runs / "_ensembles/e"
    d.mkdir(parents=True)
    save_probs(d / "probs_val.npz", plain=one_hot(labels), pred=labels, pred_plain=labels, labels=labels)
    write_json({"kind": "ensemble", "status": "done", "members": ["r/m"], "views": ["plain"],
                "num_classes": list(K), "dataset": "fp", "config": {"dataset": "fp"},
                "val_scoring": "in-sample (uniform weights, argmax: nothing fitted)", "weighting": "uniform",
                "class_names": [[f"c{c}" for c in range(k)] for k in K]}, d / "run.json")
    md = build_report(runs, tmp_path / "rep", quiet=True).read_text()
    df = pd.read_csv(tmp_path / "rep/leaderboard.csv").set_index("entry")
    assert df.loc["_ensembles/e", "tta_views"] == "plain" and df.loc["_ensembles/e", "tta_overall_acc"] == 1.0
    assert df.loc["r/m", "tta_overall_acc"] == pytest.approx(1 - 10 / 240)
    assert bool(df.loc["_ensembles/e", "tta_leader"]) and not bool(df.loc["r/m", "tta_leader"])
    assert "against that column's leader `_ensembles/e` (plain)" in md
    assert df.loc["r/m", "tta_delta"] == pytest.approx(-10 / 240)

def test_challenge_names_only_for_the_fashiondataset_layout(tmp_path):
    """A CSV dataset's leaderboard said "(2023 challenge)" and "(2024)"; now it names the metrics by what they are
    and the dataset by its folder and fingerprint. A FashionDataset one still names the challenges."""
    labels = skewed()
    fake_run(tmp_path / "fashion", "r/m", labels, labels, data_root="/data/FashionDataset",
             data_layout={"layout": "fashion"})
    md = build_report(tmp_path / "fashion", tmp_path / "rep-f", quiet=True).read_text()
    assert md.splitlines()[2].startswith("`r/m` leads on overall accuracy (2023 challenge) with ")
    assert "overall acc. (2023) [95% CI]" in md and "class-average acc. (2024) [95% CI]" in md
    assert "`FashionDataset`, FashionDataset layout (fingerprint `fp`)" in md
    assert "class-average accuracy (2024 challenge) = accuracy of each of the 26 classes" in md

    labels = np.array([[0, 1], [1, 1], [1, 0], [0, 0]])
    d = tmp_path / "csv/r/m"
    d.mkdir(parents=True)
    from bench.artifacts import save_probs, write_json
    probs = np.concatenate([np.eye(2)[labels[:, 0]], np.eye(2)[labels[:, 1]]], 1)
    save_probs(d / "probs_val.npz", plain=probs, flip=probs, labels=labels)
    write_json({"kind": "model", "status": "done", "num_classes": [2, 2], "attributes": ["colour", "season"],
                "dataset": "fp2", "config": {"dataset": "fp2", "recipe": {"select": "last"}},
                "data_root": "/data/faces", "data_layout": {"layout": "csv", "labels": None},
                "class_names": [["red", "blue"], ["summer", "winter"]]}, d / "run.json")
    md = build_report(tmp_path / "csv", tmp_path / "rep-c", quiet=True).read_text().replace(str(tmp_path), "RUNS")
    assert "challenge" not in md and "2023" not in md and "2024" not in md
    assert md.splitlines()[2].startswith("`r/m` leads on overall accuracy with **1.0000 [1.000, 1.000]**")
    assert "| overall acc. [95% CI] |" in md and "| class-average acc. [95% CI] |" in md
    assert "Dataset `faces`, CSV layout (fingerprint `fp2`)" in md


def test_an_entry_near_the_majority_baseline_is_called_not_distinguishable_from_it(tmp_path):
    """The quick start's effb3 scored 0.659 against a majority baseline of 0.625 with 0.00 on 15 of 26 classes and
    nothing said why. The report now sets each entry against the baseline (above it, inside its interval: not
    distinguishable, or below it), counts the classes it gets no image right in, and says that it was trained from
    random init, with its image size and epochs."""
    labels = skewed()  # 30 of 40 images class 0 in every attribute: the majority baseline scores 0.75
    counts = [[30] + [2] * (k - 1) for k in K]
    near = np.zeros_like(labels)
    near[30] = labels[30]  # the baseline's predictions, and one rare image right in every attribute
    below = np.zeros_like(labels)
    below[:15] = 1  # 15 common images wrong in every attribute, the 10 rare ones wrong too (class 1 is not theirs
    below[30:] = 2  # ... except where it is): overall well under 0.75
    scratch = {"init": {"init": "scratch"}, "train_class_counts": counts,
               "config": {"dataset": "fp", "recipe": {"select": "last", "size": 64, "epochs": 8}}}
    fake_run(tmp_path / "runs", "default/near", near, labels, **scratch)
    fake_run(tmp_path / "runs", "default/below", below, labels, **scratch)
    fake_run(tmp_path / "runs", "default/good", labels, labels, **{**scratch, "init": {"init": "imagenet"}})
    md = build_report(tmp_path / "runs", tmp_path / "rep", quiet=True).read_text()
    df = pd.read_csv(tmp_path / "rep/leaderboard.csv").set_index("entry")
    assert df.loc["majority baseline", "overall_acc"] == 0.75
    assert df.loc["default/near", "ci_lo"] <= 0.75 <= df.loc["default/near", "ci_hi"]  # checked independently
    assert df.loc["default/below", "ci_hi"] < 0.75 < df.loc["default/good", "ci_lo"]
    head = md.split("## Leaderboard:")[0]
    assert "**Against the majority baseline.** Predicting each attribute's most frequent training class (`majority " \
           "baseline`) scores 0.7500 overall accuracy (2023 challenge) here." in head
    bullets = {line.split(" (")[0]: line for line in head.splitlines() if line.startswith("- ")}
    assert set(bullets) == {"- above it", "- not distinguishable from it", "- below it",
                            "- trained from random init"}
    assert bullets["- above it"] == "- above it (0.7500 lies below the entry's 95% interval): `default/good` 1.0000 " \
                                    "(+0.2500), no image right in 0 of the 26 classes present"
    # near: right on class 0 and, through image 30, on class 1 of each attribute: 26 - 12 classes with none right
    assert bullets["- not distinguishable from it"] == (
        "- not distinguishable from it (0.7500 lies inside the entry's 95% interval): `default/near` "
        f"{df.loc['default/near', 'overall_acc']:.4f} (+{6 / 240:.4f}), no image right in 14 of the 26 classes present")
    assert "`default/below`" in bullets["- below it"] and "`default/near`" not in bullets["- below it"]
    assert bullets["- trained from random init"].startswith(  # in rank order; `default/good` had ImageNet weights
        "- trained from random init (no pretrained weights): `default/near` (64 px, 8 epochs), `default/below` "
        "(64 px, 8 epochs). ")


def test_figures_keep_labels_inside_the_frame_one_legend_off_the_bars_and_readable_fonts(tmp_path, monkeypatch):
    """The Pareto plot's point labels ran past its frame; class_distribution's legend was 6 pt and sat on the first
    panel's bars, and its right axes labelled every minor tick; the confusion matrices' counts were 6 pt."""
    from types import SimpleNamespace
    drawn = {}
    save = rp.save_figure

    def inspect(fig, path, key, **kw):  # measured as drawn, just before the file is written
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        drawn[path.name] = fig, r
        # every text stays inside the figure: nothing is cut off at its edges
        page = fig.bbox
        for text in [t for ax in fig.axes for t in ax.texts] + [t for lg in fig.legends for t in lg.get_texts()]:
            box = text.get_window_extent(r)
            assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1 and page.y0 - 1 <= box.y0 and \
                box.y1 <= page.y1 + 1, (path.name, text.get_text())
        if path.name == "pareto.png":
            for ax in fig.axes:
                frame = ax.get_window_extent(r)
                for t in ax.texts:  # each point's name inside its axes' frame
                    box = t.get_window_extent(r)
                    assert frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1 and frame.y0 - 1 <= box.y0 and \
                        box.y1 <= frame.y1 + 1, t.get_text()
        if path.name == "cd.png":
            assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
            legend = fig.legends[0].get_window_extent(r)
            assert not any(legend.overlaps(ax.get_window_extent(r)) for ax in fig.axes)
            assert min(t.get_fontsize() for t in fig.legends[0].get_texts()) >= 9
            for ax in fig.axes:  # no crowded minor tick labels on either axis
                assert all(t.get_text() == "" for t in ax.yaxis.get_minorticklabels())
        if path.name == "cm.png":
            assert min(t.get_fontsize() for ax in fig.axes for t in ax.texts) >= 8
        save(fig, path, key, **kw)

    monkeypatch.setattr(rp, "save_figure", inspect)
    entries = [SimpleNamespace(label=label, meta={"gflops": g, "train_time_s": t}, score={"overall_acc": acc})
               for label, g, t, acc in (("default/resnet18", 0.07, 11.0, 0.62), ("default/effb3", 0.04, 24.0, 0.48),
                                        ("_ensembles/ensemble", 0.23, 35.0, 0.625))]
    assert rp.pareto(entries, tmp_path / "pareto.png", "val overall_acc (n = 200)")
    counts = [[110, 133, 47, 70, 19, 399, 22], [241, 137, 422], [92, 154, 554], [338, 133, 2, 327],
              [64, 107, 550, 11, 4, 64], [127, 42, 631]]  # the demo's training counts
    names = [[f"class_{a}_{c}" for c in range(len(n))] for a, n in enumerate(counts)]
    weights = {"none": [np.ones(len(c)) for c in counts],
               "inverse": [len(c) / np.array(c) / np.sum(1 / np.array(c)) for c in counts]}
    rp.class_distribution(counts, names, weights, tmp_path / "cd.png")
    rng = np.random.default_rng(0)
    labels = np.stack([rng.integers(0, len(c), 50) for c in counts], 1)
    rp.confusion(labels, labels[::-1], names, tmp_path / "cm.png", "m")
    assert set(drawn) == {"pareto.png", "cd.png", "cm.png"}


def test_score_tags_say_optimistic_exactly_where_val_scoring_does():
    """The summary's *score is* tag is val_scoring in a few words; it must not call a score clean where the full
    text calls it optimistic, nor the other way round."""
    from bench.reporting.leaderboard import Entry, score_tag, val_scoring
    entry = lambda select, kind="model", **meta: Entry(  # noqa: E731
        "x", kind, {"config": {"recipe": {"select": select}}, **meta}, None, None, {})
    cases = {
        "last epoch": entry("last"),
        "epoch picked on val (optimistic)": entry("overall_acc"),
        "tuned on val (optimistic)": entry("last", from_study="s"),
        "out-of-fold": entry("last", kfold={"k": 5, "oof_optimistic": False}),
        "out-of-fold (optimistic)": entry("last", kfold={"k": 5, "oof_optimistic": True}),
        "last epoch (optimistic)": entry("last", distill={"provenance": "distilled from `e`; teacher members "
                                                       "selected on val: r/a (the student inherits that optimism)"}),
        "ensemble, cross-fitted": entry(None, "ensemble", members=["r/a"], val_scoring="5-fold CV (stratified): w"),
        "ensemble, cross-fitted (optimistic)": entry(None, "ensemble", members=["r/b"], val_scoring="5-fold CV: w"),
        "ensemble, nothing fitted (optimistic)": entry(  # a member not found counts as selected on val
            None, "ensemble", members=["r/gone"], val_scoring="in-sample (uniform weights, argmax: nothing fitted)"),
        "ensemble, fitted on val (optimistic)": entry(
            None, "ensemble", members=["r/a"], val_scoring="in-sample (too few val images for 5-fold CV; optimistic)"),
        "train counts": Entry("b", "baseline", {"val_scoring": "unbiased (fit on train counts only)"}, None, None, {}),
    }
    members = {"r/a": entry("last"), "r/b": entry("overall_acc")}  # r/a kept its last epoch, r/b was picked on val
    for tag, e in cases.items():
        assert score_tag(e, members) == tag, (tag, val_scoring(e, members))
        assert tag.endswith("(optimistic)") == ("optimis" in val_scoring(e, members)), tag


def test_a_rebuild_reuses_the_cached_statistics_and_prints_the_cold_builds_numbers(tmp_path, monkeypatch):
    """Issue #42: intervals and comparisons are cached beside the report, keyed by the probabilities' contents; a
    rebuild after one new run computes only what changed, and every number equals a cold build's. A cache written
    by other statistics code (its key had no code version) is not reused."""
    from bench import stats
    rng = np.random.default_rng(5)
    labels = np.stack([rng.integers(0, k, 80) for k in K], 1)

    def noisy(p_right):  # predictions right with probability p_right per cell
        wrong = np.stack([rng.integers(0, k, len(labels)) for k in K], 1)
        return np.where(rng.random(labels.shape) < p_right, labels, wrong)

    runs = tmp_path / "runs"
    for name, p in (("a", 0.7), ("b", 0.6), ("c", 0.5)):
        fake_run(runs, f"r/{name}", noisy(p), labels, data_root=str(tmp_path), params=1, gflops=1.0)
    build_report(runs, tmp_path / "rep", quiet=True)
    fake_run(runs, "r/d", noisy(0.65), labels, data_root=str(tmp_path), params=1, gflops=1.0)
    calls = []
    real = stats._resampled
    monkeypatch.setattr(stats, "_resampled", lambda *a: calls.append(1) or real(*a))
    build_report(runs, tmp_path / "rep", quiet=True)
    warm = pd.read_csv(tmp_path / "rep/leaderboard.csv")
    resampled_warm = len(calls)
    calls.clear()
    build_report(runs, tmp_path / "cold", quiet=True)  # another folder: no cache
    cold = pd.read_csv(tmp_path / "cold/leaderboard.csv")
    pd.testing.assert_frame_equal(warm, cold)
    # the warm rebuild resampled for the new run's two intervals and its two comparisons with the leader only
    assert 0 < resampled_warm < len(calls) / 2
    cached = json.loads((tmp_path / "rep/.stats-cache.json").read_text())
    assert len(cached) == len(json.loads((tmp_path / "cold/.stats-cache.json").read_text()))
    # statistics code that changed (an upgrade, a fix) does not read the old code's numbers: everything again
    monkeypatch.setattr(stats, "CODE", "other code")
    cold_calls = len(calls)
    calls.clear()
    build_report(runs, tmp_path / "rep", quiet=True)
    assert len(calls) == cold_calls
