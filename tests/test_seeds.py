"""Issue 40: replicas (`bench.run --seeds`) as one leaderboard row, comparisons that count seeds, seed ensembles,
and one ranking across datasets (`bench.compare`)."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.artifacts import save_probs
from bench.metrics import image_parts, score
from bench.replicas import ReplicaError, parse_seeds
from bench.reporting.leaderboard import build_report
from bench.stats import bootstrap_ci, image_diff, seed_compare, seed_interval, sign_flip_p

sys.path.insert(0, str(Path(__file__).parent))
from test_report import K, fake_run, skewed  # noqa: E402

CALIBRATION = Path(__file__).resolve().parents[1] / "scripts/seed_calibration.py"


def wrong(labels, cells):
    """`labels` with the given (image, attribute) cells predicted wrong (the next class)."""
    pred = labels.copy()
    for i, a in cells:
        pred[i, a] = (labels[i, a] + 1) % K[a]
    return pred


def replica(runs, run, model, seed, pred, labels, epochs=2, dataset="fp", **meta):
    config = {"dataset": dataset, "seed": seed, "model": model, "size": 32,
              "recipe": {"name": "finetune", "select": "last", "epochs": epochs}}
    return fake_run(runs, f"{run}/{model}-seed{seed}", pred, labels, replica={"of": model, "seed": seed},
                    config=config, dataset=dataset, **meta)


def rows_of(md: str, prefix: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith(prefix)]


# --- --seeds: bad input --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, says", [("", "names no seed"), (" , ", "names no seed"),
                                        ("0,1,0", "seed 0 given twice"), ("0,x", "'x' is not an integer"),
                                        ("1.5", "'1.5' is not an integer"), ("-1", "'-1' is not an integer >= 0")])
def test_parse_seeds_refuses_bad_lists(text, says):
    with pytest.raises(ReplicaError, match=says):
        parse_seeds(text)
    assert parse_seeds(" 2, 0 ,1") == [2, 0, 1]


@pytest.mark.parametrize("args, says", [(["--seeds", ""], "names no seed"), (["--seeds", "0,0"], "given twice"),
                                        (["--seeds", "0,a"], "not an integer"),
                                        (["--seeds", "0,1", "--seed", "0"], "--seeds 0,1 and --seed 0: give one")])
def test_bench_run_refuses_bad_seeds_before_anything_is_written(args, says, tiny_root, tmp_path, capsys):
    from bench.run import main as run_main
    with pytest.raises(SystemExit) as e:
        run_main(["--models", "resnet18", "--data", str(tiny_root), "--out", str(tmp_path / "runs"), *args])
    assert e.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# --- bench.run --seeds end to end -----------------------------------------------------------------------------------

def test_bench_run_seeds_trains_one_replica_per_seed_and_the_leaderboard_shows_one_row(tiny_root, tmp_path, capsys):
    """Two replicas of resnet18: one run folder per seed (the seed in run.json), resumed as a set, one leaderboard
    row; a replica with other epochs is refused before any training; bench.ensemble --models takes both seeds."""
    from bench.ensemble import main as ensemble_main
    from bench.run import main as run_main
    runs = tmp_path / "runs"
    common = ["--models", "resnet18", "--data", str(tiny_root), "--out", str(runs), "--size", "32", "--batch-size",
              "16", "--pretrained", "none", "--no-progress"]
    run_main([*common, "--seeds", "0,1", "--epochs", "1", "--no-report"])
    metas = {s: json.loads((runs / f"default/resnet18-seed{s}/run.json").read_text()) for s in (0, 1)}
    for s, m in metas.items():
        assert m["status"] == "done" and m["config"]["seed"] == s and m["replica"] == {"of": "resnet18", "seed": s}
    assert not (runs / "default/resnet18").exists()
    # the two seeds trained differently (another init and order), the same command again finishes nothing new
    assert metas[0]["val"]["overall_acc"] != metas[1]["val"]["overall_acc"] or \
        not np.array_equal(np.load(runs / "default/resnet18-seed0/probs_val.npz")["plain"],
                           np.load(runs / "default/resnet18-seed1/probs_val.npz")["plain"])
    capsys.readouterr()
    run_main([*common, "--seeds", "0,1", "--epochs", "1"])
    out = capsys.readouterr().out
    assert out.count("already finished") == 2
    df = pd.read_csv(tmp_path / "reports/leaderboard.csv")
    row = df[df["entry"] == "default/resnet18 (seeds 0,1)"].iloc[0]
    assert set(df["entry"]) == {"default/resnet18 (seeds 0,1)", "majority baseline"}
    accs = [metas[s]["val"]["overall_acc"] for s in (0, 1)]
    assert row["overall_acc"] == pytest.approx(np.mean(accs), abs=1e-6) and row["seeds"] == 2
    assert (row["overall_seed_min"], row["overall_seed_max"]) == pytest.approx((min(accs), max(accs)), abs=1e-6)
    # a third replica with other epochs would make the row an average of different models: refused, nothing made
    with pytest.raises(SystemExit) as e:
        run_main([*common, "--seeds", "2", "--epochs", "2", "--no-report"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "recipe.epochs" in err and "resnet18-seed0/run.json" in err
    assert not (runs / "default/resnet18-seed2").exists()
    # a deep ensemble of the seeds: --models NAME takes every replica, and says so
    ensemble_main(["--runs-dir", str(runs), "--models", "resnet18", "--out", str(tmp_path / "sub"),
                   "--weights", "uniform", "--tta", "plain"])
    out = capsys.readouterr().out
    assert "--models resnet18: takes 2 replica(s) as members, default/resnet18-seed0, default/resnet18-seed1 " \
           "(seeds 0,1)" in out
    entry = json.loads((runs / "_ensembles/ensemble/run.json").read_text())
    assert entry["members"] == ["default/resnet18-seed0", "default/resnet18-seed1"]
    md = (tmp_path / "reports/leaderboard.md").read_text()
    assert "### Seeds or backbones?" in md and "| 2 seeds of `default/resnet18` |" in md
    assert "No ensemble of different backbones with as many members here" in md


def test_kfold_replicas_are_one_out_of_fold_row_and_a_replica_without_folds_is_refused(tiny_root, tmp_path,
                                                                                       capsys):
    from bench.run import main as run_main
    runs = tmp_path / "runs"
    common = ["--models", "resnet18", "--data", str(tiny_root), "--out", str(runs), "--size", "32", "--batch-size",
              "16", "--pretrained", "none", "--no-progress", "--epochs", "1"]
    run_main([*common, "--seeds", "0,1", "--folds", "2"])
    for s in (0, 1):
        meta = json.loads((runs / f"default/resnet18-seed{s}/run.json").read_text())
        assert meta["kfold"]["k"] == 2 and meta["config"]["seed"] == s and meta["replica"]["seed"] == s
        assert (runs / f"default/resnet18-seed{s}/fold-1/run.json").exists()
    df = pd.read_csv(tmp_path / "reports/leaderboard.csv").set_index("entry")
    row = df.loc["default/resnet18 (seeds 0,1)"]
    assert row["n"] == 160 and row["scored_on"].startswith("oof-k2-") and row["seeds"] == 2  # train + val pooled
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # the same set without --folds would mix out-of-fold and val scores
        run_main([*common, "--seeds", "2", "--no-report"])
    assert e.value.code == 2 and "folds" in capsys.readouterr().err
    assert not (runs / "default/resnet18-seed2").exists()


def test_devices_share_the_replicas_each_child_starting_at_another(tiny_root, tmp_path, monkeypatch):
    """--devices with --seeds: one child per training at most (here 2 of 3 devices for 1 model x 2 seeds), child i
    starting at training i (its seeds rotated), every child given --seeds."""
    import bench.run as run_module
    from bench.fanout import FanOut
    calls = []
    monkeypatch.setattr(run_module, "run_children",
                        lambda module, devices, args: calls.append((devices, args)) or FanOut([]))
    run_module.main(["--models", "resnet18", "--data", str(tiny_root), "--out", str(tmp_path / "runs"), "--seeds",
                     "0,1", "--devices", "cpu,cpu,cpu", "--no-report", "--epochs", "1"])
    (devices, args), = calls
    assert devices == ["cpu", "cpu"]
    seeds = [next(a.split("=", 1)[1] for a in child if a.startswith("--seeds=")) for child in args]
    assert seeds == ["0,1", "1,0"] and all("--skip-claimed" in child for child in args)


# --- one row per replica set ----------------------------------------------------------------------------------------

def three_replicas(runs, labels, wrong_cells=(6, 12, 30), epochs=(2, 2, 2)):
    """r/m-seed0..2: seed s wrong on the first wrong_cells[s] cells of the texture... fit attributes, walking the
    images (so its overall accuracy is exactly 1 - wrong_cells[s] / labels.size)."""
    cells = [(i, a) for a in range(len(K)) for i in range(len(labels))]
    for s, (k, ep) in enumerate(zip(wrong_cells, epochs)):
        replica(runs, "r", "m", s, wrong(labels, cells[:k]), labels, epochs=ep, gflops=1.0, train_time_s=10 * (s + 1))


def test_a_row_of_three_replicas_has_the_exact_mean_and_spread(tmp_path):
    labels = skewed()
    runs = tmp_path / "runs"
    three_replicas(runs, labels)
    fake_run(runs, "other/m", labels, labels)  # not a replica: its own row, never merged
    build_report(runs, tmp_path / "rep", quiet=True)
    md = (tmp_path / "rep/leaderboard.md").read_text()
    df = pd.read_csv(tmp_path / "rep/leaderboard.csv").set_index("entry")
    assert set(df.index) == {"r/m (seeds 0,1,2)", "other/m"}  # no train counts: no baseline
    row = df.loc["r/m (seeds 0,1,2)"]
    overall = [1 - 6 / 240, 1 - 12 / 240, 1 - 30 / 240]
    cells = [(i, a) for a in range(len(K)) for i in range(len(labels))]
    classavg = [score(labels, wrong(labels, cells[:k]), K)["class_avg_acc"] for k in (6, 12, 30)]
    assert row["overall_acc"] == pytest.approx(np.mean(overall), abs=1e-6)
    assert (row["overall_seed_min"], row["overall_seed_max"]) == pytest.approx((0.875, 0.975), abs=1e-6)
    assert row["overall_seed_sd"] == pytest.approx(np.std(overall, ddof=1), abs=1e-6)
    assert row["class_avg_acc"] == pytest.approx(np.mean(classavg), abs=1e-6)
    assert (row["class_seed_min"], row["class_seed_max"]) == pytest.approx((min(classavg), max(classavg)), abs=1e-6)
    assert row["seeds"] == 3 and row["seed_list"] == "0,1,2" and row["train_time_s"] == pytest.approx(20)
    from bench.data import ATTRIBUTES
    from bench.data.columns import LEADERBOARD_COLUMNS  # the one list of the CSV's own columns knows the new ones
    assert set(df.reset_index().columns) - set(ATTRIBUTES) <= LEADERBOARD_COLUMNS
    assert df.loc["other/m", "seeds"] == 1
    # the texture column is the mean of the seeds' texture accuracies (the first 40 cells walk texture)
    assert row["texture"] == pytest.approx(np.mean([1 - 6 / 40, 1 - 12 / 40, 1 - 30 / 40]), abs=1e-6)
    summary = rows_of(md, "| 2 | `r/m (seeds 0,1,2)` |")[0]
    assert summary[2].startswith(f"**{np.mean(overall):.4f}** [") and summary[2].endswith("; seeds 0.8750..0.9750")
    # its interval counts seeds and images: wider than the image-only interval of its own first seed
    z = np.load(runs / "r/m-seed0/probs_val.npz")
    right = np.stack([z["plain"][:, e0:e1].argmax(1) for e0, e1 in zip(np.cumsum([0, *K])[:-1],
                                                                          np.cumsum(K))], 1) == labels
    lo, hi = bootstrap_ci(right)
    assert row["ci_hi"] - row["ci_lo"] > 2 * (hi - lo)
    assert "Retraining noise." in md and "seed sd on the target is" in md


def test_replicas_that_differ_in_more_than_the_seed_are_refused(tmp_path, capsys):
    from bench.report import main as report_main
    labels = skewed()
    runs = tmp_path / "runs"
    three_replicas(runs, labels, epochs=(2, 2, 4))
    with pytest.raises(ReplicaError, match=r"replicas of r/m differ in more than the seed: .*recipe\.epochs 2.*"
                                           r"recipe\.epochs 4"):
        build_report(runs, tmp_path / "rep", quiet=True)
    with pytest.raises(SystemExit) as e:
        report_main(["--runs-dir", str(runs), "--out", str(tmp_path / "rep")])
    assert e.value.code == 2 and "m-seed2/run.json" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()
    # replicas of one name on two datasets: refused too, whichever dataset is reported
    other = tmp_path / "runs2"
    replica(other, "r", "m", 0, labels, labels)
    replica(other, "r", "m", 1, labels, labels, dataset="fp2")
    with pytest.raises(ReplicaError, match="dataset 'fp'.*dataset 'fp2'"):
        build_report(other, tmp_path / "rep2", quiet=True)
    assert not (tmp_path / "rep2").exists()


def test_a_command_whose_report_rebuild_meets_such_replicas_keeps_its_work_and_says_so(demo_runs, tmp_path, capsys):
    """bench.ensemble (like run, distill and tune) rebuilds the leaderboard after its own work: replicas that differ
    in more than the seed stop that rebuild with a message naming them, not a traceback, and the ensemble stands."""
    import shutil

    from bench.ensemble import main as ensemble_main
    runs = tmp_path / "runs"
    shutil.copytree(demo_runs, runs)
    three_replicas(runs, skewed(), epochs=(2, 2, 4))  # hand-copied replicas of r/m (bench.run refuses to train them)
    old = tmp_path / "reports/leaderboard.md"  # the report folder of runs_dir, from an earlier build
    old.parent.mkdir()
    old.write_text("earlier")
    entry = ensemble_main(["--runs-dir", str(runs), "--runs", "default,b", "--name", "e", "--weights", "uniform",
                           "--out", str(tmp_path / "sub")])
    err = capsys.readouterr().err
    assert "warning: the leaderboard was not rebuilt" in err and "replicas of r/m differ in more than the seed" in err
    assert str(old) in err and old.read_text() == "earlier"
    assert entry["status"] == "done" and (runs / "_ensembles/e/run.json").exists()

# --- the interval and the comparison over seeds and images ---------------------------------------------------------

def replicas_of(rng, n, accs):
    """Per-image overall parts (num, den) of replicas right on a random `acc` share of each image's 6 cells."""
    nums = [rng.binomial(6, acc, (n, 1)).astype(float) for acc in accs]
    return nums, np.full((n, 1), 6.0)


def test_the_two_level_interval_is_wider_than_the_image_one_when_seeds_dominate_and_equal_without_seed_noise():
    rng = np.random.default_rng(0)
    n = 1000
    nums, den = replicas_of(rng, n, [0.75])
    same = [nums[0]] * 3  # three replicas with identical predictions: no retraining noise
    values = [n_.sum() / den.sum() for n_ in same]
    lo, hi = bootstrap_ci(nums[0], den=den)
    si = seed_interval(values, same, den)
    assert si["sd"] == 0 and si["hi"] - si["lo"] == pytest.approx(hi - lo, rel=0.06)
    assert si["mean"] == pytest.approx(values[0])
    spread, den = replicas_of(rng, n, [0.70, 0.75, 0.80])  # seed noise far above the image noise (sd 0.05)
    values = [n_.sum() / den.sum() for n_ in spread]
    si = seed_interval(values, spread, den)
    image_only = bootstrap_ci(np.mean(spread, 0), den=den)
    assert si["hi"] - si["lo"] > 5 * (image_only[1] - image_only[0])
    # by hand: the seed variance s^2 / 3 (t with about 2 degrees of freedom) dominates the width
    half = stats.t.ppf(0.975, si["df"]) * np.sqrt(np.var(values, ddof=1) / 3)
    assert si["hi"] - si["mean"] == pytest.approx(half, rel=0.02) and 2 <= si["df"] < 2.1


@pytest.mark.parametrize("den", [None, np.ones((4, 1))])
def test_seed_compare_without_any_variance_is_not_p_zero(den):
    """Four images; the leader's two seeds get images 1-2 and 3-4 right (0.5 each, no seed spread, every image's
    seed mean 0.5), the other row's two seeds get none: se is 0, and seed_compare returned p 0 ("behind" at adjusted
    p 0). The exact sign-flip test over the 4 images says 2 of the 16 sign patterns are as extreme: p 0.125."""
    lead = [np.array([[1], [1], [0], [0]]), np.array([[0], [0], [1], [1]])]
    other = [np.zeros((4, 1), int)] * 2
    got = seed_compare([0.0, 0.0], [0.5, 0.5], other, lead, den)
    assert got["se"] == 0 and got["delta"] == -0.5
    assert got["p"] == pytest.approx(2 / 16)


def test_seed_compare_with_only_rounding_for_variance_is_not_p_zero():
    """Three identical seeds per row, each of 22 images with exactly one more attribute right for the leader: no
    variance, but the float arithmetic leaves se ~3e-17, and the t test printed p 0. The sign-flip test over the 22
    images: only the 2 all-same-sign patterns of 2^22 are as extreme, so with 10,000 random flips p = 1 / 10001."""
    c = np.array([5, 4, 4, 3, 5, 3, 2, 6, 2, 2, 5, 4, 1, 1, 3, 5, 3, 5, 2, 2, 5, 6])  # leader's right attributes
    lead = (np.arange(6)[None, :] < c[:, None]).astype(int)
    other = (np.arange(6)[None, :] < (c - 1)[:, None]).astype(int)
    got = seed_compare([other.mean()] * 3, [lead.mean()] * 3, [other] * 3, [lead] * 3)
    assert got["delta"] == pytest.approx(-1 / 6)
    assert got["p"] == pytest.approx(1 / 10001)


def test_seed_compare_is_welch_over_seeds_plus_the_paired_image_variance():
    """Against a computation by hand for overall accuracy (each image's share (x_i - mean) / N)."""
    rng = np.random.default_rng(1)
    n = 500
    a, den = replicas_of(rng, n, [0.70, 0.74, 0.72])
    b, _ = replicas_of(rng, n, [0.80, 0.79, 0.83])
    va, vb = [x.sum() / den.sum() for x in a], [x.sum() / den.sum() for x in b]
    got = seed_compare(va, vb, a, b, den)

    def shares(x):
        f = x[:, 0] / 6
        return (f - f.mean()) / n
    ua, ub = np.stack([shares(x) for x in a]), np.stack([shares(x) for x in b])
    image = ((ua.mean(0) - ub.mean(0)) ** 2).sum() - ua.var(0, ddof=1).sum() / 3 - ub.var(0, ddof=1).sum() / 3
    parts = [(np.var(va, ddof=1) / 3, 2), (np.var(vb, ddof=1) / 3, 2), (max(image, 0), n - 1)]
    se = np.sqrt(sum(v for v, _ in parts))
    df = sum(v for v, _ in parts) ** 2 / sum(v * v / d for v, d in parts if v > 0)
    delta = np.mean(va) - np.mean(vb)
    assert got["delta"] == pytest.approx(delta) and got["se"] == pytest.approx(se) and got["df"] == pytest.approx(df)
    assert got["p"] == pytest.approx(2 * stats.t.sf(abs(delta) / se, df))
    assert got["hi"] - got["delta"] == pytest.approx(stats.t.ppf(0.975, df) * se)


def load_calibration():
    spec = importlib.util.spec_from_file_location("seed_calibration", CALIBRATION)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_the_simulated_false_positive_rate_is_pinned():
    """Equally good models whose seed noise is 3x their image noise (a fixed sd_delta), 200 simulations, seed 0:
    the seed-aware comparison rejects at its level (7 of 200: 3.5%), today's image-only test on one seed each far
    above it (146 of 200). The numbers are pinned: a change to the test or the simulation shows here."""
    cal = load_calibration()
    r = cal.simulate(3.0, 200, seed=0, sd_delta=0.13, tests=("seeds+images", "today, 1 seed each"))
    assert 2.5 < r.seed_sd / r.image_sd < 3.5
    assert r.rejected == {"seeds+images": 7, "today, 1 seed each": 146}
    lo, hi = cal.clopper_pearson(7, 200)
    assert lo < 0.05 and hi < 0.1


# --- comparisons that count seeds on the leaderboard ---------------------------------------------------------------

def test_rows_of_replicas_are_compared_over_seeds_and_a_single_run_beside_the_measured_seed_spread(tmp_path):
    """A: three replicas with very different accuracies (seed noise), B: three close ones 0.10 better on average,
    C: one run. Over images alone B's lead over A looks certain; over seeds and images it is not, and the verdict
    says so. C's comparison stays image-only, with A's and B's measured seed sd beside it."""
    rng = np.random.default_rng(0)
    n = 200
    labels = np.stack([rng.integers(0, k, n) for k in K], 1)

    def noisy(p_wrong):
        flip = rng.random(labels.shape) < p_wrong
        pred = labels.copy()
        pred[flip] = (labels[flip] + 1) % np.array(K)[np.nonzero(flip)[1]]
        return pred

    runs = tmp_path / "runs"
    preds = {("a", s): noisy(p) for s, p in enumerate((0.05, 0.45, 0.25))}
    preds.update({("b", s): noisy(p) for s, p in enumerate((0.15, 0.16, 0.14))})
    for (m, s), pred in preds.items():
        replica(runs, "r", m, s, pred, labels)
    fake_run(runs, "r/c", noisy(0.22), labels)
    md = build_report(runs, tmp_path / "rep", quiet=True).read_text()
    df = pd.read_csv(tmp_path / "rep/leaderboard.csv").set_index("entry")
    a, b, c = "r/a (seeds 0,1,2)", "r/b (seeds 0,1,2)", "r/c"
    assert df.loc[b, "leader"] and df.loc[a, "tested_over"] == "seeds+images" and df.loc[c, "tested_over"] == "images"
    # the seed-aware p, recomputed from the replicas' own predictions
    parts = {m: [image_parts(labels, preds[m, s] == labels, K, "overall") for s in range(3)] for m in "ab"}
    vals = {m: [x.sum() / d.sum() for x, d in parts[m]] for m in "ab"}
    sc = seed_compare(vals["a"], vals["b"], [x for x, _ in parts["a"]], [x for x, _ in parts["b"]], parts["a"][0][1])
    assert df.loc[a, "p_seeds"] == pytest.approx(sc["p"], rel=1e-4) and np.isnan(df.loc[a, "p_sign_flip"])
    assert df.loc[a, "delta"] == pytest.approx(sc["delta"], abs=1e-6) and sc["delta"] < -0.05 and sc["p"] > 0.05
    # one Holm family of both kinds of p (by hand for two tests: c's p is the smaller, so a's is max(2 p_c, p_a))
    p_c = df.loc[c, "p_sign_flip"]
    assert p_c < sc["p"] and df.loc[a, "p_holm"] == pytest.approx(max(2 * p_c, sc["p"]), rel=1e-5)
    assert df.loc[c, "p_holm"] == pytest.approx(2 * p_c, rel=1e-5)
    # the image-only test on the seed means would call a behind b; the verdict uses the seed-aware result
    diff = image_diff(np.mean([x for x, _ in parts["a"]], 0), np.mean([x for x, _ in parts["b"]], 0),
                      parts["a"][0][1])
    assert sign_flip_p(diff, 2000) < 0.001
    clause = next(x for x in md.splitlines()[2].split("; ") if f"`{a}`" in x)
    assert "not distinguishable from it" in clause
    sds = sorted(np.std(vals[m], ddof=1) for m in "ab")
    c_row = next(r for r in rows_of(md, f"| `{c}` |") if len(r) == 7)
    assert c_row[3] == "sign-flip, images"
    assert c_row[4] == f"not counted (seed sd measured here: {sds[0]:.4f}-{sds[1]:.4f})"
    a_row = next(r for r in rows_of(md, f"| `{a}` |") if len(r) == 7)
    assert a_row[3] == "t, seeds + images" and a_row[4] == "counted (3 vs 3 seeds)"


def test_seed_ensembles_are_set_beside_backbone_ensembles(tmp_path, capsys):
    """Replicas a-seed0, a-seed1 and another model b: the deep ensemble of a's seeds (`--models a`) and the
    ensemble of a-seed0 with b, two members each, in one table with their gains and the pair compared."""
    from bench.ensembling.ensemble import EnsembleSpec, make_ensemble
    rng = np.random.default_rng(0)
    n = 80
    labels = np.stack([rng.integers(0, k, n) for k in K], 1)

    def probs(strength):
        logits = [rng.normal(size=(n, k)) + strength * np.eye(k)[labels[:, a]] for a, k in enumerate(K)]
        return np.concatenate([np.exp(z) / np.exp(z).sum(1, keepdims=True) for z in logits], 1).astype(np.float32)

    runs = tmp_path / "runs"
    for label, strength, extra in (("r/a-seed0", 1.0, {"replica": {"of": "a", "seed": 0}}),
                                   ("r/a-seed1", 0.9, {"replica": {"of": "a", "seed": 1}}), ("r/b", 0.8, {})):
        model = label.split("/")[1].split("-")[0]
        d = fake_run(runs, label, labels, labels, data_root=str(tmp_path), params=1, gflops=1.0,
                     finished="2026-01-01 00:00:00", name=model,
                     config={"dataset": "fp", "model": model, "seed": extra.get("replica", {}).get("seed", 0),
                             "recipe": {"select": "last"}}, **extra)
        save_probs(d / "probs_val.npz", plain=probs(strength), flip=probs(strength), labels=labels)
        save_probs(d / "probs_test.npz", plain=probs(0)[:5], flip=probs(0)[:5])
    for name, kw in (("seeds2", {"models": ["a"]}), ("backbones2", {"runs": ["r/a-seed0", "r/b"]})):
        make_ensemble(EnsembleSpec(runs_dir=runs, weights="uniform", views=["plain"], out=tmp_path / name,
                                   name=name, **kw), "cpu")
    md = build_report(runs, tmp_path / "rep", quiet=True).read_text()
    table = {r[0]: r for r in rows_of(md, "| `_ensembles/")}
    assert table["`_ensembles/seeds2`"][1:4] == ["seeds", "2 seeds of `r/a`", "2.00"]
    assert table["`_ensembles/backbones2`"][1:4] == ["backbones", "`a`, `b`", "2.00"]
    df = pd.read_csv(tmp_path / "rep/leaderboard.csv").set_index("entry")
    assert "r/a (seeds 0,1)" in df.index and "r/a-seed0" not in df.index  # the replicas are one row
    # the gain over the best member, by hand from the members' stored probabilities
    edges = np.cumsum([0, *K])
    member = {x: (np.stack([np.load(runs / x / "probs_val.npz")["plain"][:, e0:e1].argmax(1)
                            for e0, e1 in zip(edges[:-1], edges[1:])], 1) == labels).mean()
              for x in ("r/a-seed0", "r/a-seed1", "r/b")}
    for name, members in (("seeds2", ("r/a-seed0", "r/a-seed1")), ("backbones2", ("r/a-seed0", "r/b"))):
        best = max(members, key=lambda x: member[x])
        gain = df.loc[f"_ensembles/{name}", "overall_acc"] - member[best]
        assert table[f"`_ensembles/{name}`"][5] == f"{gain:+.4f} (vs `{best}`)"
    line = next(x for x in md.splitlines() if x.startswith("- `_ensembles/backbones2` - `_ensembles/seeds2`"))
    assert "(2 members each; 2.00 vs 2.00 GFLOPs)" in line and "sign-flip p" in line


# --- one ranking across datasets -----------------------------------------------------------------------------------

def test_compare_help_is_answered_before_torch_loads():
    import subprocess
    probe = ("import runpy, sys\nsys.argv = ['bench.compare', '--help']\ntry:\n"
             "    runpy.run_module('bench.compare', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('TORCH-LOADED' if 'torch' in sys.modules else 'NO-TORCH')\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "usage: python -m bench.compare" in out.stdout and out.stdout.strip().endswith("NO-TORCH")


def dataset_folder(root, d, accs, fp=None, n=40):
    """Working folder `root/wD` on dataset fingerprint fp (default fpD): model m wrong on accs[m] cells."""
    labels = skewed(n)
    cells = [(i, a) for a in range(len(K)) for i in range(n)]
    for model, k in accs.items():
        fake_run(root / f"w{d}" / "runs", f"r/{model}", wrong(labels, cells[:k]), labels, dataset=fp or f"fp{d}",
                 data_root=f"/data/set{d}",
                 config={"dataset": fp or f"fp{d}", "model": model, "size": 32, "recipe": {"name": "finetune"}})
    return root / f"w{d}"


def test_a_cross_dataset_page_has_the_hand_computed_average_ranks(tmp_path):
    """Wrong cells per model on three datasets (fewer wrong = better): ranks a 1,2,1; b 2,1,3; c 3,3,2; so average
    ranks a 4/3, b 2, c 8/3; d is missing on the second dataset and is not ranked."""
    from bench.compare import main as compare_main
    wrongs = [{"a": 10, "b": 20, "c": 30, "d": 5}, {"a": 20, "b": 10, "c": 30}, {"a": 5, "b": 40, "c": 20, "d": 1}]
    folders = [str(dataset_folder(tmp_path, d, w)) for d, w in enumerate(wrongs)]
    path = compare_main([*folders, "--out", str(tmp_path / "out")])
    md = path.read_text()
    scores, per_dataset = md.split("## Ranks per dataset")
    table = {r[0]: r for r in rows_of(scores, "| `") if r[0].endswith("px)")}
    assert [r[1:] for r in rows_of(per_dataset, "| `")] == [["1", "2", "1"], ["2", "1", "3"], ["3", "3", "2"]]
    assert table["`a` (finetune, 32 px)"][-1] == "1.33" and table["`b` (finetune, 32 px)"][-1] == "2.00"
    assert table["`c` (finetune, 32 px)"][-1] == "2.67" and table["`d` (finetune, 32 px)"][-1] == "not ranked"
    assert table["`d` (finetune, 32 px)"][2] == "-"
    assert table["`a` (finetune, 32 px)"][1].startswith(f"{1 - 10 / 240:.4f} [")
    assert "`d` (finetune, 32 px), missing on `set1 (fp1)`" in md
    ranks = np.array([[1, 2, 3], [2, 1, 3], [1, 3, 2]])
    stat = stats.friedmanchisquare(*ranks.T).statistic
    assert f"chi-square {stat:.2f}" in md and "](compare_files/cd.png)" in md
    assert (tmp_path / "out/compare_files/cd.png").stat().st_size > 0
    assert "`set0`, FashionDataset layout (fingerprint `fp0`)" in md


@pytest.mark.parametrize("case, says", [("one", "needs two or more working folders"),
                                        ("same", "hold the same dataset (fingerprint fp0)"),
                                        ("none", "no model is on every dataset")])
def test_a_cross_dataset_comparison_that_cannot_be_made_is_refused(case, says, tmp_path, capsys):
    from bench.compare import main as compare_main
    if case == "one":
        folders = [dataset_folder(tmp_path, 0, {"a": 1})] * 2
    elif case == "same":
        folders = [dataset_folder(tmp_path, 0, {"a": 1}), dataset_folder(tmp_path, 1, {"a": 2}, fp="fp0")]
    else:
        folders = [dataset_folder(tmp_path, 0, {"a": 1}), dataset_folder(tmp_path, 1, {"b": 2})]
    with pytest.raises(SystemExit) as e:
        compare_main([*map(str, folders), "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
