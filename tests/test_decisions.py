"""The challenge metrics as targets: decision rules fitted for them (post-hoc logit adjustment), their out-of-fold
scoring, the logit-adjusted loss, and --metric in every command."""
import json
import shutil

import numpy as np
import pytest
import torch
from sklearn.metrics import recall_score

from bench.data.folds import stratified_folds
from bench.ensembling.decisions import decide, fit_rule, logit_adjusted, prior_from_counts
from bench.ensembling.ensemble import cross_validate
from bench.metrics import class_average_accuracy, score


def test_logit_adjustment_by_hand():
    # one attribute, prior [0.9, 0.1], p = [0.7, 0.3]: p / pi^tau favours class 1 once tau > log(7/3) / log 9 = 0.386
    probs, prior = np.array([[0.7, 0.3]]), [np.array([0.9, 0.1])]
    for tau, want in ((0.0, 0), (0.3, 0), (0.4, 1), (1.0, 1)):
        assert decide("logit_adjusted", probs, (2,), prior, {"tau": [tau]}).tolist() == [[want]]
    assert decide("argmax", probs, (2,), prior).tolist() == [[0]]
    assert [p.tolist() for p in prior_from_counts([[3, 0, 1]])] == [[0.6, 0.2, 0.2]]  # unseen counted as 1


def skewed_posteriors(n: int, prior, seed: int):
    """Labels drawn from `prior`, one noisy feature per image, and the exact Bayes posterior p(y|x): the argmax is
    the best rule for accuracy, and p(y|x) / pi_y (tau = 1) the best for mean recall."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(prior), n, p=prior)
    mu = np.arange(len(prior)) * 1.5
    x = rng.normal(mu[y], 1.0)
    like = np.exp(-0.5 * (x[:, None] - mu[None]) ** 2)
    post = like * np.asarray(prior)
    return y, post / post.sum(1, keepdims=True)


def test_fit_rule_picks_the_grid_value_with_the_best_mean_recall():
    prior = [0.8, 0.15, 0.05]
    y, p = skewed_posteriors(2000, prior, 0)
    taus = fit_rule("logit_adjusted", p, y[:, None], (3,), [np.array(prior)], "class")["tau"]
    # independent search: sklearn's mean recall of every grid value; the smallest best value wins ties
    recalls = [recall_score(y, decide("logit_adjusted", p, (3,), [np.array(prior)], {"tau": [t]})[:, 0],
                            average="macro") for t in logit_adjusted.grid["tau"]]
    assert taus == [logit_adjusted.grid["tau"][int(np.argmax(recalls))]]
    assert 0.5 <= taus[0] <= 1.5  # the Bayes-optimal adjustment for mean recall is tau = 1
    assert fit_rule("logit_adjusted", p, y[:, None], (3,), [np.array(prior)], "overall")["tau"][0] <= 0.2
    assert fit_rule("argmax", p, y[:, None], (3,), [np.array(prior)], "class") == {}


def test_out_of_fold_logit_adjustment_raises_the_class_average():
    """Calibrated posteriors under a skewed prior: adjusting for the class average gains a lot, out-of-fold, and
    costs overall accuracy, as it should. Each fold's predictions come from a tau fitted on the other folds."""
    prior = [np.array([0.8, 0.15, 0.05]), np.array([0.6, 0.4])]
    y0, p0 = skewed_posteriors(1500, prior[0], 1)
    y1, p1 = skewed_posteriors(1500, prior[1], 2)
    labels, probs = np.stack([y0, y1], 1), np.concatenate([p0, p1], 1)
    nc = (3, 2)
    cv = cross_validate("uniform", [probs], labels, nc, folds=5, decision="logit_adjusted", prior=prior,
                        metric="class")
    plain = score(labels, decide("argmax", probs, nc, prior), nc)
    assert cv.argmax_score == plain  # uniform weights on one member: the combined probabilities are its own
    assert cv.score["class_avg_acc"] > plain["class_avg_acc"] + 0.05
    assert cv.score["overall_acc"] < plain["overall_acc"]
    assert cv.score["class_avg_acc"] == pytest.approx(class_average_accuracy(labels, cv.pred, nc))
    fold = stratified_folds(labels, 5, 0)  # the same folds, recomputed: held-out images never fit their own tau
    for f in range(5):
        tr, te = fold != f, fold == f
        params = fit_rule("logit_adjusted", probs[tr], labels[tr], nc, prior, "class")
        assert (decide("logit_adjusted", probs[te], nc, prior, params) == cv.pred[te]).all()


def test_logit_adjusted_loss_by_hand():
    """Cross-entropy on z + tau log pi: with counts [3, 1] and zero logits, q = pi, so a class-1 image costs
    -log 0.25 at tau 1 and -log 0.5 (plain) at tau 0."""
    from bench.training.losses import MultiAttributeLoss
    from zoo.recipes import Recipe
    z, t = torch.zeros(1, 2), torch.tensor([[1]])
    loss = MultiAttributeLoss([[3, 1]], "logit_adjusted", recipe=Recipe(loss="logit_adjusted", logit_tau=1.0))
    assert loss.per_attribute([z], t).item() == pytest.approx(-np.log(0.25))
    half = MultiAttributeLoss([[3, 1]], "logit_adjusted", recipe=Recipe(loss="logit_adjusted", logit_tau=0.5))
    q1 = 0.25 ** 0.5 / (0.75 ** 0.5 + 0.25 ** 0.5)  # softmax of 0.5 log pi
    assert half.per_attribute([z], t).item() == pytest.approx(-np.log(q1))
    plain = MultiAttributeLoss([[3, 1]], "logit_adjusted", recipe=Recipe(loss="logit_adjusted", logit_tau=0.0))
    assert plain.per_attribute([z], t).item() == pytest.approx(np.log(2))


def test_ensemble_metric_class_writes_the_adjusted_prediction(demo_runs, tmp_path, capsys):
    from bench.ensemble import main as ensemble_main
    from bench.ensembling.combiners import combine
    from bench.reporting.leaderboard import build_report
    runs = tmp_path / "runs"
    shutil.copytree(demo_runs, runs)
    out = tmp_path / "sub"
    entry = ensemble_main(["--runs-dir", str(runs), "--out", str(out), "--no-report", "--metric", "class"])
    printed = capsys.readouterr().out
    assert "logit_adjusted (out-of-fold)" in printed and "overall / class-average accuracy" in printed
    assert entry["decision"] == "logit_adjusted" and len(entry["decision_params"]["tau"]) == 6
    assert entry["val_scoring"].endswith("logit_adjusted rule fitted out-of-fold for class")
    # the submission, recomputed from the members' files, the stored weights, tau and the training frequencies
    test = [(np.load(runs / n / "probs_test.npz")["plain"] + np.load(runs / n / "probs_test.npz")["flip"]) / 2
            for n in entry["members"]]
    K = tuple(entry["num_classes"])
    prior = [np.maximum(np.array(c, float), 1) / np.maximum(np.array(c, float), 1).sum()
             for c in entry["train_class_counts"]]
    comb = combine(test, np.array(entry["weights"]), K)
    want = np.stack([(np.log(np.clip(p, 1e-12, 1)) - tau * np.log(pi)).argmax(1) for p, pi, tau in
                     zip(np.split(comb, np.cumsum(K)[:-1], 1), prior, entry["decision_params"]["tau"])], 1)
    assert (np.loadtxt(out / "prediction.txt", dtype=int) == want).all()
    # the leaderboard scores the stored out-of-fold decisions, shows the rule, and ranks by the class average
    oof = np.load(runs / "_ensembles/ensemble/probs_val.npz")
    assert entry["val"]["class_avg_acc"] == pytest.approx(class_average_accuracy(oof["labels"], oof["pred"], K))
    md = build_report(runs, tmp_path / "rep", quiet=True, metric="class").read_text()
    assert "target metric `class_avg_acc`" in md and "logit_adjusted (tau " in md
    import pandas as pd
    df = pd.read_csv(tmp_path / "rep/leaderboard.csv")
    assert list(df["class_avg_acc"]) == sorted(df["class_avg_acc"], reverse=True)
    ens = df[df["kind"] == "ensemble"].iloc[0]
    # the CSV holds %.6g: an accuracy in [0.1, 1) to 6 decimals, so up to 5e-7 off (rel=1e-6 allowed 2.5e-7 at 0.25);
    # the ensemble's TTA column holds its score at its views, its main column its plain-view twin (like its members)
    assert ens["tta_class_avg_acc"] == pytest.approx(entry["val"]["class_avg_acc"], abs=5e-7)
    assert ens["class_avg_acc"] == pytest.approx(class_average_accuracy(oof["labels"], oof["pred_plain"], K), abs=5e-7)
    assert ens["class_avg_acc"] == pytest.approx(entry["val_plain_view"]["class_avg_acc"], abs=5e-7)
    assert "Δ class_avg_acc vs leader" in md
    # one run gets its decision rule the same way; it has nothing to weigh, so its entry never says weights were fitted
    one = ensemble_main(["--runs-dir", str(runs), "--runs", "b", "--name", "b-class", "--out", str(tmp_path / "one"),
                         "--no-report", "--metric", "class"])
    assert one["weighting"] == "uniform" and one["weights"] == [1.0]
    assert one["val_scoring"] == "5-fold CV (stratified): logit_adjusted rule fitted out-of-fold for class"
    assert "one member (b/resnet18): weights caruana -> uniform" in capsys.readouterr().out


def test_run_metric_class_selects_epochs_by_the_class_average(tiny_root, tmp_path):
    from bench.run import main as run_main
    common = ["--models", "resnet18", "--data", str(tiny_root), "--out", str(tmp_path), "--size", "32", "--epochs",
              "2", "--batch-size", "16", "--pretrained", "none", "--no-progress", "--no-report", "--metric", "class"]
    meta = run_main([*common, "--recipe", "v0", "--run", "v0"])[0]
    assert meta["config"]["recipe"]["select"] == "class_avg_acc"
    import pandas as pd
    hist = pd.read_csv(tmp_path / "v0/resnet18/history.csv")
    assert meta["best_epoch"] == int(hist["epoch"][hist["class_avg_acc"].idxmax()])
    meta = run_main([*common, "--run", "scratch"])[0]  # the scratch recipe keeps its last epoch: val picks nothing
    assert meta["config"]["recipe"]["select"] == "last"
    assert json.loads((tmp_path / "scratch/resnet18/run.json").read_text())["best_epoch"] == 2
