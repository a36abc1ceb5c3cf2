"""Rectified-flow conventions (noising, velocity, t sampling, shift, the Euler sampler) and the lr schedule."""

import pytest
import torch

from videoalign_ray.flow.schedule import (
    add_noise,
    euler_sample,
    euler_timesteps,
    sample_t,
    shift_t,
    to_model_timestep,
    velocity_target,
)


def test_noising_endpoints_and_velocity():
    x0, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert torch.allclose(add_noise(x0, eps, torch.zeros(2)), x0)
    assert torch.allclose(add_noise(x0, eps, torch.ones(2)), eps)
    t = torch.tensor([0.25, 0.75])
    # d x_t / d t = eps - x0 (finite difference)
    dt = 1e-3
    fd = (add_noise(x0, eps, t + dt) - add_noise(x0, eps, t)) / dt
    assert torch.allclose(fd, velocity_target(x0, eps), atol=1e-3)


def test_euler_with_exact_velocity_recovers_x0():
    x0, eps = torch.randn(3, 2, 5), torch.randn(3, 2, 5)
    out = euler_sample(lambda x, t: velocity_target(x0, eps), eps, euler_timesteps(7))
    assert torch.allclose(out, x0, atol=1e-5)


def test_timesteps_shift_and_model_scale():
    ts = euler_timesteps(4)
    assert ts.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert shift_t(torch.tensor([0.5]), 3.0).item() == pytest.approx(1.5 / 2.0)
    assert shift_t(torch.tensor([0.0, 1.0]), 3.0).tolist() == [0.0, 1.0]
    assert to_model_timestep(torch.tensor([0.5])).item() == 500.0


@pytest.mark.parametrize("mode", ["uniform", "logit_normal"])
def test_sample_t_range_and_seed(mode):
    a = sample_t(1000, mode=mode, generator=torch.Generator().manual_seed(1))
    b = sample_t(1000, mode=mode, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a.min() > 0 and a.max() < 1
    assert abs(a.mean().item() - 0.5) < 0.05
    with pytest.raises(ValueError):
        sample_t(3, mode="bogus")


def test_cosine_lr_schedule_follows_the_formula():
    """The DeepSpeed config's cosine schedule: linear warm-up to lr, then lr * (m + (1 - m) * (1 + cos(pi p)) / 2)
    with p the fraction of the decay done, ending at min_lr_ratio * lr; "constant" has no scheduler."""
    import math

    from deepspeed.runtime.lr_schedules import WarmupCosineLR

    from videoalign_ray.runtime.strategy import deepspeed_config

    common = dict(micro_batch=1, grad_accum=1, zero_stage=0, lr=1e-3, weight_decay=0.0, grad_clip=1.0, bf16=False,
                  world_size=1)
    assert "scheduler" not in deepspeed_config(**common)
    with pytest.raises(ValueError, match="total_steps"):
        deepspeed_config(**common, lr_schedule="cosine")
    cfg = deepspeed_config(**common, warmup_steps=10, lr_schedule="cosine", total_steps=110, min_lr_ratio=0.1)
    assert cfg["scheduler"]["type"] == "WarmupCosineLR"
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = WarmupCosineLR(opt, **cfg["scheduler"]["params"])
    lrs = []
    for _ in range(120):
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[4] == pytest.approx(1e-3 * 4 / 10)  # warm-up: step i at i / warmup of lr
    # decay: after warm-up step k of 100, ratio = 0.1 + 0.9 * (1 + cos(pi * k / 100)) / 2
    assert lrs[9 + 50] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5), rel=1e-6)
    assert lrs[9 + 25] == pytest.approx(1e-3 * (0.1 + 0.9 * (1 + math.cos(math.pi * 0.25)) / 2), rel=1e-6)
    assert lrs[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
