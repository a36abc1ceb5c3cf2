"""BT / BTT / regression losses and the tie-aware accuracy, against hand values and brute force."""

import math

import numpy as np
import pytest
import torch

from videoalign_ray.reward.losses import bt_loss, btt_loss, btt_probabilities, regression_loss
from videoalign_ray.reward.metrics import accuracy_without_ties, tie_aware_accuracy


def test_btt_probabilities_sum_to_one_and_match_rao_kupper():
    ra, rb = torch.randn(100), torch.randn(100)
    pa, pb, pt = btt_probabilities(ra, rb, k=5.0)
    assert torch.allclose(pa + pb + pt, torch.ones(100))
    assert (pt > 0).all()
    # P(A>B) = e^rA / (e^rA + k e^rB)
    assert torch.allclose(pa, ra.exp() / (ra.exp() + 5 * rb.exp()), atol=1e-6)


def test_btt_loss_is_negative_log_probability():
    ra = torch.tensor([[0.3, -1.0, 2.0]])
    rb = torch.tensor([[0.1, 0.5, 2.0]])
    labels = torch.tensor([[1, -1, 0]])
    pa, pb, pt = btt_probabilities(ra, rb)
    expected = -(torch.log(pa[0, 0]) + torch.log(pb[0, 1]) + torch.log(pt[0, 2])) / 3
    assert btt_loss(ra, rb, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_bt_excludes_ties_and_masks_invalid():
    ra = torch.tensor([[1.0, 0.0, 5.0]])
    rb = torch.tensor([[0.0, 1.0, 0.0]])
    # A wins dim 0 (margin 1), tie on dim 1 (excluded), invalid on dim 2 (masked)
    loss = bt_loss(ra, rb, torch.tensor([[1, 0, -100]]))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-6)
    assert btt_loss(ra, rb, torch.tensor([[-100, -100, -100]])).item() == 0.0


def test_regression_loss_masks_missing():
    r = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    mos = torch.tensor([[4.0, float("nan")], [3.0, 4.0]])  # targets 1, -, 0, 1
    assert regression_loss(r, mos).item() == pytest.approx((0 + 0 + 1) / 3)


def test_accuracy_without_ties():
    m = np.array([1.0, -2.0, 0.0, 3.0, 0.5])
    h = np.array([1, 1, 1, 0, -1])
    assert accuracy_without_ties(m, h) == pytest.approx(1 / 4)  # m=0 is discordant; tie label skipped


def _brute(m, h):
    best = (-1.0, None)
    for eps in [-np.inf, *sorted(set(np.abs(m)))]:
        pred_tie = np.abs(m) <= eps
        acc = np.mean(np.where(pred_tie, h == 0, (h != 0) & (np.sign(m) == h)))
        if acc > best[0]:
            best = (acc, eps)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_tie_aware_accuracy_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    m = np.round(rng.normal(size=n), 1)  # rounding creates equal |m| values
    h = rng.choice([-1, 0, 1], size=n, p=[0.35, 0.3, 0.35])
    acc, eps = tie_aware_accuracy(m, h)
    b_acc, b_eps = _brute(m, h)
    assert acc == pytest.approx(b_acc)
    assert eps == b_eps


def test_overall_accuracy_uses_the_given_overall_labels():
    """accuracy_table scores Overall against a benchmark's own Overall column when given, else the majority."""
    from videoalign_ray.reward.train_loop import accuracy_table

    ra = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [2.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    rb = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    labels = np.array([[1, 1, 1], [-1, -1, -1], [1, -1, 1], [-1, 1, -1]])  # majority: +1, -1, +1, -1
    derived = accuracy_table(ra, rb, labels)
    # normalised Overall margins (mean/std over all 8 videos per dimension) have signs +, -, +, -:
    assert derived["acc_Overall"] == 1.0
    given = np.array([1, 1, -1, -100])  # the table disagrees with the majority on rows 2 and 3; row 4 unlabelled
    table = accuracy_table(ra, rb, labels, given)
    assert table["acc_Overall"] == pytest.approx(1 / 3)  # only row 1 of the 3 labelled rows is concordant
    assert table["acc_VQ"] == derived["acc_VQ"]  # the per-dimension accuracies do not change
