import numpy as np
import pytest

from bench.stats import bootstrap_ci, mcnemar, paired_bootstrap


def test_mcnemar_exact_hand_computed():
    a = np.array([1, 1, 1, 1, 1, 0, 1, 0], bool)  # a right, b wrong on 5; both right on 1, both wrong on 2
    b = np.array([0, 0, 0, 0, 0, 0, 1, 0], bool)
    r = mcnemar(a, b)
    assert (r["only_a"], r["only_b"]) == (5, 0)
    assert r["p"] == pytest.approx(2 * 0.5 ** 5)  # two-sided exact binomial: 0.0625
    # 3 vs 1 discordant: P(X<=1)+P(X>=3) for Bin(4, .5) = (1+4+4+1)/16
    r = mcnemar(np.array([1, 1, 1, 0]), np.array([0, 0, 0, 1]))
    assert r["p"] == pytest.approx(10 / 16)
    assert mcnemar(a, a)["p"] == 1.0


def test_bootstrap_two_images_hand_computed():
    # image 0 all right, image 1 all wrong: resampled means are 0, .5, 1 with prob 1/4, 1/2, 1/4
    correct = np.array([[1] * 6, [0] * 6], bool)
    lo, hi = bootstrap_ci(correct, n_boot=4000)
    assert (lo, hi) == (0.0, 1.0)
    lo, hi = bootstrap_ci(correct, n_boot=4000, alpha=0.6)  # central 40% lies inside the 0.5 mass
    assert lo == hi == 0.5


def test_bootstrap_matches_normal_approximation():
    rng = np.random.default_rng(0)
    correct = np.zeros((400, 1), bool)
    correct[:320] = True  # p = 0.8 over independent images
    rng.shuffle(correct)
    lo, hi = bootstrap_ci(correct, n_boot=4000)
    half = 1.96 * np.sqrt(0.8 * 0.2 / 400)
    assert lo == pytest.approx(0.8 - half, abs=0.006) and hi == pytest.approx(0.8 + half, abs=0.006)


def test_paired_bootstrap_detects_a_real_difference():
    rng = np.random.default_rng(1)
    b = rng.random((300, 6)) < 0.7
    a = b.copy()
    a[:60, 0] = True  # a fixes some of b's errors, never worse
    r = paired_bootstrap(a, b)
    assert r["delta"] > 0 and r["lo"] > 0 and r["p"] < 0.01
    same = paired_bootstrap(b, b)
    assert same["delta"] == 0 and same["p"] == 1.0
