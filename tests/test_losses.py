"""Flow-DPO and SFT against hand-computed values and against the spec written out independently."""

import math

import pytest
import torch

from videoalign_ray.flow.losses import flow_dpo_loss, per_sample_mse, sft_loss


def test_flow_dpo_two_pairs_hand_computed():
    # pair 1: chosen gap -0.1, rejected gap +0.1 -> inside = -0.5*2*(-0.2) = 0.2
    # pair 2: chosen gap +0.1, rejected gap -0.2 -> inside = -0.5*2*(0.3) = -0.3
    pol_w, pol_l = torch.tensor([0.5, 0.4]), torch.tensor([0.8, 0.3])
    ref_w, ref_l = torch.tensor([0.6, 0.3]), torch.tensor([0.7, 0.5])
    loss, m = flow_dpo_loss(pol_w, pol_l, ref_w, ref_l, beta=2.0)
    # -logsigmoid(0.2) = 0.5981388693, -logsigmoid(-0.3) = 0.8543552444
    assert loss.item() == pytest.approx((0.5981388693 + 0.8543552444) / 2, abs=1e-7)
    assert m["implicit_acc"].item() == 0.5
    assert m["inside_mean"].item() == pytest.approx(-0.05, abs=1e-7)
    assert m["chosen_gap"].item() == pytest.approx(0.0, abs=1e-7)
    assert m["rejected_gap"].item() == pytest.approx(-0.05, abs=1e-7)


def test_flow_dpo_equal_policy_and_reference_is_log2():
    e = torch.rand(5)
    loss, m = flow_dpo_loss(e, e + 1, e, e + 1, beta=500.0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert m["implicit_acc"].item() == 0.0


def test_flow_dpo_time_dependent_beta():
    pol_w, pol_l = torch.tensor([0.5]), torch.tensor([0.8])
    ref_w, ref_l = torch.tensor([0.6]), torch.tensor([0.7])
    t = torch.tensor([0.5])
    loss, _ = flow_dpo_loss(pol_w, pol_l, ref_w, ref_l, beta=8.0, t=t, beta_schedule="time_dependent")
    # beta_t = 8 * 0.25 = 2 -> same as pair 1 above
    assert loss.item() == pytest.approx(0.5981388693, abs=1e-7)
    with pytest.raises(ValueError):
        flow_dpo_loss(pol_w, pol_l, ref_w, ref_l, beta_schedule="time_dependent")


def test_flow_dpo_gradient_lowers_chosen_error():
    pol_w = torch.tensor([0.5], requires_grad=True)
    pol_l = torch.tensor([0.5], requires_grad=True)
    loss, _ = flow_dpo_loss(pol_w, pol_l, torch.tensor([0.5]), torch.tensor([0.5]), beta=10.0)
    loss.backward()
    assert pol_w.grad.item() > 0  # descending the loss lowers the chosen error
    assert pol_l.grad.item() < 0  # and raises the rejected error


def test_per_sample_mse_and_sft():
    pred = torch.zeros(2, 1, 2, 2, 2)
    target = torch.ones(2, 1, 2, 2, 2)
    target[1] *= 3.0
    assert per_sample_mse(pred, target).tolist() == [1.0, 9.0]
    assert sft_loss(pred, target).item() == 5.0
