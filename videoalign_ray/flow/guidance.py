"""Flow-NRG: noisy reward guidance of the flow velocity (paper Eq. 11 / 22; docs/algorithms.md section 3).

Pure tensor functions: ``v_guided = v - w * t / (1 - t) * grad_{x_t} sum_d lambda_d r_phi(x_t, t, c)[:, d]``.
With the convention ``x_t = (1 - t) x0 + t eps`` and Euler steps ``x <- x - dt * v`` (t decreasing),
subtracting the reward gradient from ``v`` moves ``x`` up the reward.
"""

from __future__ import annotations

import torch

DEFAULT_MAX_FACTOR = 10.0
"""Cap on ``t / (1 - t)`` (the factor is infinite at ``t = 1``; ``t = 10/11`` and above are capped)."""


def guidance_factor(t: torch.Tensor, max_factor: float = DEFAULT_MAX_FACTOR) -> torch.Tensor:
    """``min(t / (1 - t), max_factor)`` per sample ``(B,)``, and exactly 0 at ``t >= 1`` (no guidance there).

    Raises:
        ValueError: ``max_factor <= 0``.
    """
    if max_factor <= 0:
        raise ValueError(f"max_factor must be > 0, got {max_factor}")
    t = t.float()
    at_one = t >= 1.0
    factor = torch.where(at_one, torch.zeros_like(t), t / (1.0 - torch.where(at_one, torch.zeros_like(t), t)))
    return factor.clamp(max=max_factor)


def nrg_velocity(
    velocity: torch.Tensor, reward_grad: torch.Tensor, t: torch.Tensor, scale: float,
    max_factor: float = DEFAULT_MAX_FACTOR,
) -> torch.Tensor:
    """``velocity - scale * guidance_factor(t) * reward_grad``; ``velocity``/``reward_grad`` ``(B, ...)``,
    ``t`` ``(B,)`` in [0, 1]. The reward gradient is of ``sum_d lambda_d r_d`` (weights already applied)."""
    f = guidance_factor(t, max_factor).to(velocity.device).reshape(-1, *([1] * (velocity.ndim - 1)))
    return velocity - scale * f * reward_grad.to(velocity.dtype)
