"""Flow-DPO on the tiny Wan transformer equals the spec (docs/algorithms.md section 1) written out here."""

import math

import pytest
import torch
import torch.nn.functional as F

from videoalign_ray.flow.model import add_lora, load_transformer
from videoalign_ray.flow.train_loop import LoopConfig, compute_loss


def _cfg(**kw):
    base = dict(
        model_dir="", objective="dpo", finetune="lora", lora_rank=4, lora_alpha=8.0, lr=1e-3, weight_decay=0.0,
        grad_clip=1.0, t_sampling="uniform", logit_mean=0.0, logit_std=1.0,
        t_shift=1.0, micro_batch=2, grad_accum=1, zero_stage=0, bf16=False, max_steps=1, checkpoint_every=1,
        log_every=1, seed=0, mlflow_tracking_uri="", mlflow_run_id="", fault_marker="",
    )
    args = {"beta": 500.0, "beta_schedule": "constant", "rwr_tau": 1.0, "rwr_normalize": "none"}
    args.update({k: kw.pop(k) for k in list(kw) if k in args})  # the objectives' section values
    base.update(kw)
    return LoopConfig(**base, objective_args=args)


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(3)
    return {
        "chosen": torch.randn(2, 3, 4, 16, 16, generator=g),
        "rejected": torch.randn(2, 3, 4, 16, 16, generator=g),
        "prompt_embeds": torch.randn(2, 6, 384, generator=g),
    }


def _err(model, x0, eps, t, text):
    x_t = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * eps
    v = model(hidden_states=x_t, timestep=t * 1000, encoder_hidden_states=text, return_dict=False)[0]
    return ((v - (eps - x0)) ** 2).mean(dim=(1, 2, 3, 4))


def test_lora_policy_at_init_gives_log2(tiny_model_dir, batch):
    policy = load_transformer(tiny_model_dir)
    add_lora(policy, 4, 8.0, seed=0)
    loss, m = compute_loss(policy, None, batch, _cfg(), torch.Generator().manual_seed(0), "cpu", torch.float32)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert m["inside_mean"].item() == pytest.approx(0.0, abs=1e-6)


def test_two_sample_batch_matches_spec(tiny_model_dir, batch):
    policy = load_transformer(tiny_model_dir)
    reference = load_transformer(tiny_model_dir)
    add_lora(policy, 4, 8.0, seed=0)
    with torch.no_grad():  # move the policy away from the reference
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(n)))
    cfg = _cfg(beta=50.0)
    loss, m = compute_loss(policy, None, batch, cfg, torch.Generator().manual_seed(11), "cpu", torch.float32)

    g = torch.Generator().manual_seed(11)  # one t and one eps per pair, shared by chosen and rejected
    t = torch.rand(2, generator=g)
    eps = torch.randn(batch["chosen"].shape, generator=g)
    with torch.no_grad():
        pw = _err(policy, batch["chosen"], eps, t, batch["prompt_embeds"])
        pl = _err(policy, batch["rejected"], eps, t, batch["prompt_embeds"])
        rw = _err(reference, batch["chosen"], eps, t, batch["prompt_embeds"])
        rl = _err(reference, batch["rejected"], eps, t, batch["prompt_embeds"])
    inside = -0.5 * 50.0 * ((pw - rw) - (pl - rl))
    expected = -F.logsigmoid(inside).mean()
    assert abs(inside).max() > 1e-3  # the check is not vacuous: policy != reference
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert m["implicit_acc"].item() == pytest.approx((inside > 0).float().mean().item())

    # The full-fine-tuning path (frozen reference copy) gives the same number.
    loss_full, _ = compute_loss(policy, reference, batch, _cfg(beta=50.0, finetune="full"),
                                torch.Generator().manual_seed(11), "cpu", torch.float32)
    assert loss_full.item() == pytest.approx(expected.item(), rel=1e-5)


def test_rwr_with_equal_rewards_equals_the_unweighted_loss(tiny_model_dir, batch):
    """RWR in the trainer: equal rewards (batch softmax) give exactly the w = 1 loss on the same videos,
    noise and t; unequal rewards change it."""
    policy = load_transformer(tiny_model_dir)
    base, _ = compute_loss(policy, None, batch, _cfg(objective="pretrain"), torch.Generator().manual_seed(5),
                           "cpu", torch.float32)
    eq = dict(batch, reward_chosen=torch.full((2,), 0.3), reward_rejected=torch.full((2,), 0.3))
    rwr, m = compute_loss(policy, None, eq, _cfg(objective="rwr", rwr_normalize="batch_softmax"),
                          torch.Generator().manual_seed(5), "cpu", torch.float32)
    assert rwr.item() == pytest.approx(base.item(), rel=1e-6)
    assert m["weight_mean"].item() == pytest.approx(1.0)
    uneq = dict(batch, reward_chosen=torch.tensor([2.0, 2.0]), reward_rejected=torch.tensor([-2.0, -2.0]))
    rwr2, _ = compute_loss(policy, None, uneq, _cfg(objective="rwr"), torch.Generator().manual_seed(5), "cpu",
                           torch.float32)
    assert abs(rwr2.item() - base.item()) > 1e-4
