import math

import numpy as np
import pytest
import torch

from bench.training.losses import MultiAttributeLoss, class_weights

COUNTS = [1, 3]  # N = 4


def test_class_weights_hand_computed():
    assert class_weights(COUNTS, "none") == pytest.approx([1, 1])
    # inverse: raw 1, 1/3; normaliser N / sum(raw * n) = 4 / 2 -> [2, 2/3] (sklearn "balanced")
    assert class_weights(COUNTS, "inverse") == pytest.approx([2, 2 / 3])
    # sqrt: raw 1, 1/sqrt3; sum(raw*n) = 1 + sqrt3 -> scale 4 / (1 + sqrt3)
    s = 4 / (1 + math.sqrt(3))
    assert class_weights(COUNTS, "sqrt_inverse") == pytest.approx([s, s / math.sqrt(3)])
    # effective number, beta 0.5: E = (1 - .5^n) / .5 -> 1, 1.75; raw = 1/E
    raw = np.array([1 / 1.0, 1 / 1.75])
    assert class_weights(COUNTS, "effective", beta=0.5) == pytest.approx(raw * 4 / (raw @ [1, 3]))
    for scheme in ("inverse", "sqrt_inverse", "effective"):  # mean weight per training sample is 1
        assert class_weights(COUNTS, scheme) @ np.array(COUNTS) == pytest.approx(4)
    assert class_weights([0, 5], "inverse")[0] > 0  # unseen class counted as one sample, not infinite
    with pytest.raises(ValueError, match="unknown loss scheme"):
        class_weights(COUNTS, "nope")


def logits_targets():
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t = torch.tensor([[0], [1], [0]])
    return [z], t


def ce(z, t):
    return -torch.log_softmax(z, 1)[torch.arange(len(t)), t]


def test_weighted_loss_is_mean_of_weighted_sample_losses():
    logits, t = logits_targets()
    w = torch.tensor(class_weights([2, 1], "inverse"), dtype=torch.float32)  # [0.75, 1.5]
    loss = MultiAttributeLoss([[2, 1]], "inverse")(logits, t)
    expect = (w[t[:, 0]] * ce(logits[0], t[:, 0])).mean()
    assert loss.item() == pytest.approx(expect.item(), rel=1e-6)


def test_focal_and_label_smoothing_hand_computed():
    logits, t = logits_targets()
    z, y = logits[0], t[:, 0]
    p = torch.softmax(z, 1)[torch.arange(3), y]
    focal = MultiAttributeLoss([[2, 1]], "focal", gamma=2.0)(logits, t)
    assert focal.item() == pytest.approx(((1 - p) ** 2 * ce(z, y)).mean().item(), rel=1e-6)
    eps = 0.2  # smoothed target: 1 - eps + eps/K on the true class, eps/K elsewhere
    logp = torch.log_softmax(z, 1)
    smooth = -((1 - eps) * logp[torch.arange(3), y] + eps / 2 * logp.sum(1))
    ls = MultiAttributeLoss([[2, 1]], "none", label_smoothing=eps)(logits, t)
    assert ls.item() == pytest.approx(smooth.mean().item(), rel=1e-6)
    both = MultiAttributeLoss([[2, 1]], "focal", gamma=1.0, label_smoothing=eps)(logits, t)
    assert both.item() == pytest.approx(((1 - p) * smooth).mean().item(), rel=1e-6)


def test_uniform_and_uncertainty_task_weighting():
    z1, z2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    t = torch.tensor([[0, 1]])
    l1, l2 = ce(z1, t[:, 0]).item(), ce(z2, t[:, 1]).item()
    uniform = MultiAttributeLoss([[1, 1], [1, 1, 1]])
    assert uniform([z1, z2], t).item() == pytest.approx(l1 + l2, rel=1e-6)
    unc = MultiAttributeLoss([[1, 1], [1, 1, 1]], task_weighting="uncertainty")
    with torch.no_grad():
        unc.log_vars.copy_(torch.tensor([0.5, -1.0]))
    expect = math.exp(-0.5) * l1 + 0.25 + math.exp(1.0) * l2 - 0.5
    assert unc([z1, z2], t).item() == pytest.approx(expect, rel=1e-6)
    assert unc.log_vars.requires_grad


NECKLINE = [2086, 826, 19, 2069]  # real train counts: square neckline is rare


@pytest.mark.parametrize("scheme", ["none", "inverse", "sqrt_inverse", "effective", "focal"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.2])
def test_loss_of_a_one_hot_label_is_minimised_by_that_label(scheme, eps):
    """Class weights scale a sample's loss; they must not move its optimum (PyTorch's weighted label smoothing
    did: with `inverse` weights the best answer to a crew-neckline label was 'square neckline')."""
    loss_fn = MultiAttributeLoss([NECKLINE], scheme, beta=0.999, gamma=2.0, label_smoothing=eps)
    for label in range(len(NECKLINE)):
        z = torch.zeros(1, len(NECKLINE), requires_grad=True)
        opt = torch.optim.Adam([z], lr=0.1)
        for _ in range(300):
            opt.zero_grad()
            loss_fn([z], torch.tensor([[label]])).backward()
            opt.step()
        assert int(z.argmax()) == label, (scheme, eps, label, z.softmax(1).tolist())
        if eps and scheme != "focal":  # the optimum is the smoothed target itself: 1 - e + e/K on the label
            p = z.detach().softmax(1)[0]
            assert float(p[label]) == pytest.approx(1 - eps + eps / 4, abs=0.01)


def test_focal_with_gamma_below_one_keeps_gradients_finite_on_a_perfect_fit():
    """(1 - p)^gamma has an infinite slope at p = 1 for gamma < 1: a sample fitted to float32 certainty made the
    gradient NaN and killed tune trials (focal_gamma is searched in [0.5, 4])."""
    z = torch.tensor([[60.0, 0.0, 0.0]], requires_grad=True)  # softmax rounds to exactly 1 in float32
    loss = MultiAttributeLoss([[1, 1, 1]], "focal", gamma=0.5)([z], torch.tensor([[0]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
