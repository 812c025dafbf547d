import numpy as np
import pytest
from scipy.stats import binomtest, permutation_test

from bench.stats import bootstrap_ci, format_p, holm, image_diff, paired_bootstrap, sign_flip_p


def test_sign_flip_exact_hand_computed():
    # per image a has 4, 5, 6 attributes right and b 3 of 6: differences 1, 2, 3. The 8 sign flips give sums
    # 6, 4, 2, 0, 0, -2, -4, -6; |sum| >= 6 for 2 of them: p = 2/8
    a = np.array([[1] * 4 + [0] * 2, [1] * 5 + [0], [1] * 6], bool)
    b = np.array([[1] * 3 + [0] * 3] * 3, bool)
    assert image_diff(a, b).tolist() == [1, 2, 3]
    assert sign_flip_p(image_diff(a, b)) == pytest.approx(2 / 8)
    assert sign_flip_p(np.array([2, 2, 2, 2])) == pytest.approx(2 / 16)  # only all-plus and all-minus reach 8
    assert sign_flip_p(np.array([1, -1])) == 1.0 and sign_flip_p(np.zeros(5)) == 1.0
    # several tests at once give the same as one by one
    assert sign_flip_p(np.array([[1, 2, 3], [2, 2, 2]])).tolist() == pytest.approx([2 / 8, 2 / 8])


def test_sign_flip_matches_scipy_exact_permutation_test():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.integers(0, 7, 11), rng.integers(0, 7, 11)  # correct attributes per image, 11 images
        ref = permutation_test((x, y), lambda u, v, axis: np.mean(u - v, axis=axis), permutation_type="samples",
                               n_resamples=np.inf, vectorized=True).pvalue
        assert sign_flip_p(x - y) == pytest.approx(ref, abs=1e-12)


def test_sign_flip_random_p_is_never_zero():
    d = np.full(300, 6)  # a beats b on every attribute of every image: no random flip reaches the observed sum
    assert sign_flip_p(d, n_perm=999) == pytest.approx(1 / 1000)


def test_holm_hand_computed():
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.01]).tolist() == pytest.approx([0.5, 0.02])
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]


def _flattened_mcnemar(a, b):
    """The old leaderboard test: every image-attribute pair an independent trial."""
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    return binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0


def test_equal_models_with_correlated_errors_reject_at_the_nominal_rate():
    """Two equally good models whose errors cluster within images (a hard image, or one that throws a model off,
    is wrong on several attributes): the sign-flip test over images rejects ~5% at 5%, the flattened McNemar test
    (N x 6 pairs as independent trials) far more often."""
    rng = np.random.default_rng(0)
    sims, n = 300, 200
    hard = rng.beta(2, 1, (sims, n, 1))  # per-image difficulty shared by both models and all 6 attributes

    def model():
        off = rng.random((sims, n, 1)) < 0.25  # this model is thrown off by this image
        return rng.random((sims, n, 6)) < np.where(off, 0.2 * hard, hard)

    a, b = model(), model()
    p = sign_flip_p(np.stack([image_diff(a[s], b[s]) for s in range(sims)]), n_perm=2000)
    flat = np.array([_flattened_mcnemar(a[s], b[s]) for s in range(sims)])
    rate, flat_rate = (p < 0.05).mean(), (flat < 0.05).mean()
    assert 0.02 <= rate <= 0.09
    assert flat_rate > 0.12 and flat_rate > 2 * rate


def test_bootstrap_two_images_hand_computed():
    # image 0 all right, image 1 all wrong: resampled means are 0, .5, 1 with prob 1/4, 1/2, 1/4
    correct = np.array([[1] * 6, [0] * 6], bool)
    lo, hi = bootstrap_ci(correct, n_boot=4000)
    assert (lo, hi) == (0.0, 1.0)
    lo, hi = bootstrap_ci(correct, n_boot=4000, alpha=0.6)  # central 40% lies inside the 0.5 mass
    assert lo == hi == 0.5


def test_resample_counts_sum_each_rows_draws_repeats_included():
    from bench.stats import _counts
    idx = np.array([[0, 0, 2, 3], [3, 3, 3, 3], [1, 2, 0, 3]])
    x = np.array([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0], [8.0, 80.0]])
    by_hand = np.array([[1 + 1 + 4 + 8, 10 + 10 + 40 + 80], [32, 320], [15, 150]])  # row 2 draws each image once
    assert (_counts(idx, 4) @ x == by_hand).all()
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 50, size=(200, 50))
    x = rng.random((50, 3))
    assert np.allclose(_counts(idx, 50) @ x, x[idx].sum(1), rtol=1e-12)  # the gather, summed per row


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
    assert r["delta"] > 0 and r["lo"] > 0
    same = paired_bootstrap(b, b)
    assert same["delta"] == same["lo"] == same["hi"] == 0
    assert sign_flip_p(image_diff(a, b)) < 0.01


def test_class_average_in_per_image_parts_equals_the_metric():
    """The 2024 metric as per-image parts: image_diff sums to the exact difference of class-average accuracy, the
    full-sample 'resample' gives the metric itself, and a leave-nothing-out interval brackets it."""
    from bench.metrics import class_average_accuracy, image_parts
    K = (3, 2)
    rng = np.random.default_rng(1)
    y = np.stack([rng.integers(0, 3, 40), rng.integers(0, 2, 40)], 1)
    y[0, 0] = 2  # class 2 of attribute 0 present
    pa, pb = rng.integers(0, 2, (40, 2)), y.copy()
    pb[:5] = 0
    num_a, den = image_parts(y, pa == y, K, "class")
    num_b, _ = image_parts(y, pb == y, K, "class")
    ref = class_average_accuracy(y, pa, K) - class_average_accuracy(y, pb, K)
    assert image_diff(num_a, num_b, den).sum() == pytest.approx(ref)
    assert paired_bootstrap(num_a, num_b, den=den)["delta"] == pytest.approx(ref)
    lo, hi = bootstrap_ci(num_a, den=den)
    assert lo <= class_average_accuracy(y, pa, K) <= hi
    # hand-computed: 2 classes of one attribute, one image each and one right: class average 0.5
    num, den = image_parts(np.array([[0], [1]]), np.array([[True], [False]]), (2,), "class")
    assert num.tolist() == [[1, 0], [0, 0]] and den.tolist() == [[1, 0], [0, 1]]
    # overall accuracy in the same form: one group, the per-image mean
    num, den = image_parts(y, pa == y, K, "overall")
    assert num.sum() / den.sum() == pytest.approx((pa == y).mean())


def test_class_average_intervals_never_drop_a_rare_class():
    """A resample that loses the 3 images of a rare class used to average over the other classes only: for a
    model that always predicts the common class (class average 1/2 on this sample, whatever the resample) the
    interval's upper end was 1.0, excluding nothing and far from the score. Resamples must keep every class."""
    from bench.metrics import class_average_accuracy, image_parts
    y = np.zeros((100, 1), int)
    y[:3] = 1  # rare class: 3 of 100 images (about 5% of resamples lose all three)
    always_common = np.zeros_like(y)
    num, den = image_parts(y, always_common == y, (3,), "class")
    assert class_average_accuracy(y, always_common, (3,)) == 0.5
    assert bootstrap_ci(num, den=den, n_boot=2000) == (0.5, 0.5)
    perfect, _ = image_parts(y, y == y, (3,), "class")
    diff = paired_bootstrap(num, perfect, den=den, n_boot=2000)
    assert (diff["delta"], diff["lo"], diff["hi"]) == (-0.5, -0.5, -0.5)


@pytest.mark.parametrize("p, digits, text", [
    (0.0496, 2, "0.0496"),  # .2g would print 0.05 beside "p < 0.05"
    (500 / 10001, 3, "0.049995"),  # a random-flip p with 10000 flips: .3g and .4g both print 0.05
    (0.0504, 2, "0.05"),  # at or above the level: 0.05 is on the right side already
    (0.05, 2, "0.05"), (0.012, 2, "0.012"), (0.00012, 3, "0.00012"), (0.26, 3, "0.26"), (1.0, 2, "1")])
def test_a_printed_p_stays_on_its_side_of_the_level(p, digits, text):
    assert format_p(p, digits) == text
    assert (float(format_p(p, digits)) < 0.05) == (p < 0.05)
