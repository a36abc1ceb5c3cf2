"""Rectified-flow conventions: noising, velocity, t sampling, shift and the Euler sampler."""

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
