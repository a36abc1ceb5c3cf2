"""Flow-DPO, Flow-RWR and SFT against hand-computed values and the spec written out independently."""

import math

import pytest
import torch

from videoalign_ray.flow.losses import (
    combine_rewards,
    flow_dpo_loss,
    flow_rwr_loss,
    per_sample_mse,
    rwr_weights,
    sft_loss,
)


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


def test_rwr_hand_computed():
    pred = torch.zeros(2, 1, 2, 2, 2)
    target = torch.ones(2, 1, 2, 2, 2)
    target[1] *= 3.0  # per-sample errors 1 and 9
    rewards = torch.tensor([0.0, math.log(2.0)])
    loss, m = flow_rwr_loss(pred, target, rewards)  # w = exp(r) = (1, 2)
    assert loss.item() == pytest.approx((1 * 1 + 2 * 9) / 2)
    loss_t, _ = flow_rwr_loss(pred, target, rewards, tau=0.5)  # w = exp(2r) = (1, 4)
    assert loss_t.item() == pytest.approx((1 + 4 * 9) / 2)
    loss_s, m_s = flow_rwr_loss(pred, target, rewards, normalize="batch_softmax")  # w = 2 * (1/3, 2/3)
    assert loss_s.item() == pytest.approx((2 / 3 * 1 + 4 / 3 * 9) / 2)
    assert m_s["weight_mean"].item() == pytest.approx(1.0)


def test_rwr_with_equal_rewards_is_sft():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 3, 2, 4, 4, generator=g), torch.randn(4, 3, 2, 4, 4, generator=g)
    sft = sft_loss(pred, target)
    assert flow_rwr_loss(pred, target, torch.zeros(4))[0].item() == pytest.approx(sft.item(), rel=1e-6)
    for c in (-3.0, 0.7, 5.0):  # any constant reward with batch-softmax weights
        loss, _ = flow_rwr_loss(pred, target, torch.full((4,), c), normalize="batch_softmax")
        assert loss.item() == pytest.approx(sft.item(), rel=1e-6)


def test_rwr_weights_errors_and_gradient_direction():
    with pytest.raises(ValueError, match="tau"):
        rwr_weights(torch.zeros(2), tau=0.0)
    with pytest.raises(ValueError, match="normalisation"):
        rwr_weights(torch.zeros(2), normalize="max")
    # The gradient pulls harder towards the higher-reward sample's target.
    pred = torch.zeros(2, 1, 1, 1, 1, requires_grad=True)
    target = torch.ones(2, 1, 1, 1, 1)
    flow_rwr_loss(pred, target, torch.tensor([1.0, -1.0]))[0].backward()
    assert pred.grad[0].item() < pred.grad[1].item() < 0


def test_combine_rewards_weighted_mean():
    r = torch.tensor([[1.0, 2.0, 3.0], [0.0, -3.0, 3.0]])
    assert combine_rewards(r).tolist() == pytest.approx([2.0, 0.0])
    assert combine_rewards(r, (0.0, 0.0, 1.0)).tolist() == pytest.approx([3.0, 3.0])
    assert combine_rewards(r, (1.0, 1.0, 2.0)).tolist() == pytest.approx([9 / 4, 3 / 4])
    with pytest.raises(ValueError):
        combine_rewards(r, (0.0, 0.0, 0.0))


def test_heldout_metrics_weigh_pairs_reuse_the_noise_and_pad_forwards():
    """The validation mean is over pairs (a short last micro-batch weighs less), each evaluation draws the same
    generator stream (so the metric moves only with the weights), and a rank with fewer pairs runs padding
    forwards that are not counted (ZeRO-3 needs every rank in every forward)."""
    import numpy as np
    import torch

    from videoalign_ray.flow.validation import heldout_metrics

    rows = [{"x": np.array([float(i)], np.float32)} for i in range(5)]
    seen, calls = [], []

    def loss_fn(batch, gen):
        calls.append(len(batch["x"]))
        seen.append(torch.rand(1, generator=gen).item())
        return batch["x"].mean(), {"loss": batch["x"].mean()}

    sums, n = heldout_metrics(loss_fn, rows, micro_batch=2, seed=1, keys=("loss",), num_batches=4, padding=rows)
    assert n == 5 and sums["loss"] / n == pytest.approx(np.mean(range(5)))  # (0.5*2 + 2.5*2 + 4*1) / 5 = 2
    assert calls == [2, 2, 1, 2]  # three counted micro-batches, one padding forward
    first = seen[:3]
    seen.clear()
    heldout_metrics(loss_fn, rows, micro_batch=2, seed=1, keys=("loss",))
    assert seen == first
