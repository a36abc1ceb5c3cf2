"""Rectified-flow schedule (docs/algorithms.md section 0; diffusers' FlowMatchEulerDiscreteScheduler).

Convention: ``x0`` clean latents ``(B, C, F, H, W)``, ``eps ~ N(0, I)``, ``t in [0, 1]`` with ``t = 1`` pure
noise; ``x_t = (1 - t) x0 + t eps``; velocity target ``v = eps - x0``. The project keeps ``t`` in [0, 1];
models receive ``timestep = t * 1000`` (see :func:`to_model_timestep`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

NUM_TRAIN_TIMESTEPS = 1000


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def add_noise(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) * x0 + t * eps``; ``t`` has shape ``(B,)``, the others ``(B, ...)``."""
    tb = _bcast(t, x0)
    return (1 - tb) * x0 + tb * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The flow-matching target ``v = eps - x0`` (same shape as ``x0``)."""
    return eps - x0


def shift_t(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Timestep shift ``s t / (1 + (s - 1) t)`` (SD3 / Wan); identity for ``s = 1``."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def sample_t(
    batch: int,
    *,
    mode: Literal["uniform", "logit_normal"] = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Training timesteps ``t`` of shape ``(batch,)``, float32 in (0, 1).

    ``uniform``: U(0, 1) (paper pseudo-code); ``logit_normal``: sigmoid(N(mean, std)) (SD3, flow_grpo);
    then the optional shift.
    """
    if mode == "uniform":
        t = torch.rand(batch, generator=generator)
    elif mode == "logit_normal":
        t = torch.sigmoid(logit_mean + logit_std * torch.randn(batch, generator=generator))
    else:
        raise ValueError(f"unknown t sampling mode {mode!r}")
    return shift_t(t, shift)


def to_model_timestep(t: torch.Tensor) -> torch.Tensor:
    """``t`` in [0, 1] -> the transformer's ``timestep`` in [0, 1000] (diffusers' sigmas * 1000)."""
    return t * NUM_TRAIN_TIMESTEPS


def euler_timesteps(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """``num_steps + 1`` values of ``t`` from 1 down to 0 (shifted), float32."""
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    return shift_t(torch.linspace(1.0, 0.0, num_steps + 1), shift)


VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def euler_sample(velocity: VelocityFn, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Integrate the flow ODE from ``t = timesteps[0]`` to ``timesteps[-1]`` with Euler steps.

    ``x <- x - (t_i - t_{i+1}) * v(x, t_i)``, where ``velocity(x, t)`` takes ``t`` of shape ``(B,)``.
    Returns latents of the same shape as ``noise``.
    """
    x = noise
    for i in range(len(timesteps) - 1):
        t_i, t_next = timesteps[i], timesteps[i + 1]
        v = velocity(x, t_i.expand(x.shape[0]))
        x = x - (t_i - t_next) * v
    return x
