"""Stochastic sampling of the flow with per-step log-probabilities (Flow-GRPO, Liu et al. 2025, arXiv 2505.05470,
Eq. 9-10; yifan123/flow_grpo ``sde_step_with_logprob``, ``sde_type='sde'``).

The probability-flow ODE ``dx = v dt`` is replaced by the SDE with the same marginals,
``dx = [v + s_t^2 / (2 t) (x + (1 - t) v)] dt + s_t dw``, with noise level ``s_t = a sqrt(t / (1 - t))``
(``a``: ``noise_level``). One Euler-Maruyama step from ``t`` down to ``t' < t`` (``dt = t' - t < 0``) is the
Gaussian ``x' ~ N(mean, (s_t sqrt(-dt))^2 I)`` with
``mean = x (1 + s_t^2 dt / (2 t)) + v (1 + s_t^2 (1 - t) / (2 t)) dt``: its log-density is the policy's
log-probability of the step. At ``t = 1`` the noise level uses ``t_max`` (the schedule's second value) in
``1 - t``, as flow_grpo does, so it stays finite.

Convention as :mod:`videoalign_ray.flow.schedule`: ``t = 1`` noise, ``x_t = (1 - t) x0 + t eps``, ``v = eps - x0``.
Pure tensor functions, float32 throughout (bf16 overflows in the mean, flow_grpo notes the same).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


def _col(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.float().reshape(-1, *([1] * (like.ndim - 1)))


def sde_noise_std(t: torch.Tensor, noise_level: float, t_max: float) -> torch.Tensor:
    """``s_t = noise_level * sqrt(t / (1 - t))`` ``(B,)`` float32, with ``t_max`` in place of ``t`` in ``1 - t``
    where ``t == 1``."""
    t = t.float()
    return torch.sqrt(t / (1 - torch.where(t == 1, torch.full_like(t, t_max), t))) * noise_level


@dataclass(frozen=True)
class SDEStep:
    """One stochastic step: ``next`` latents ``(B, C, F, h, w)``, ``log_prob`` ``(B,)`` (the Gaussian
    log-density of ``next`` averaged over its elements, flow_grpo's reduction), ``mean`` (same shape as the
    latents) and ``std`` ``(B,)`` the noise level ``s_t`` (the step's standard deviation is ``s_t sqrt(-dt)``)."""

    next: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def sde_step(x: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, *, noise_level: float,
             t_max: float, next_latents: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> SDEStep:
    """One Euler-Maruyama step of the flow SDE from ``t`` ``(B,)`` to ``t_next`` ``(B,)`` (``t_next < t``).

    ``x`` / ``velocity``: ``(B, C, F, h, w)``. ``next_latents`` given: its log-probability under this step
    (training: the stored sample); else a sample is drawn with ``generator`` (CPU noise, moved to ``x``'s device).

    Raises:
        ValueError: ``t_next >= t`` somewhere, or ``t <= 0`` (no step to take).
    """
    if bool((t_next >= t).any()) or bool((t <= 0).any()):
        raise ValueError("an SDE step needs 0 < t and t_next < t")
    x, velocity = x.float(), velocity.float()
    std = sde_noise_std(t, noise_level, t_max)
    s, tb, dt = _col(std, x), _col(t, x), _col(t_next - t, x)
    mean = x * (1 + s**2 / (2 * tb) * dt) + velocity * (1 + s**2 * (1 - tb) / (2 * tb)) * dt
    scale = s * torch.sqrt(-dt)
    if next_latents is None:
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        next_latents = mean + scale * noise
    next_latents = next_latents.float()
    log_density = (-((next_latents.detach() - mean) ** 2) / (2 * scale**2) - torch.log(scale)
                   - 0.5 * math.log(2 * math.pi))
    return SDEStep(next_latents, log_density.flatten(1).mean(dim=1), mean, std)


@dataclass(frozen=True)
class Trajectory:
    """What training needs from a sampled batch, on CPU: for each SDE step ``j`` in ``steps``, ``latents[j]``
    (the step's input, ``(B, C, F, h, w)``), ``next_latents[j]``, ``t[j]`` / ``t_next[j]`` (scalars) and
    ``log_probs[j]`` ``(B,)`` under the sampling policy; ``final`` the clean latents ``(B, C, F, h, w)``."""

    steps: tuple[int, ...]
    latents: tuple[torch.Tensor, ...]
    next_latents: tuple[torch.Tensor, ...]
    t: tuple[float, ...]
    t_next: tuple[float, ...]
    log_probs: tuple[torch.Tensor, ...]
    final: torch.Tensor


VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def sde_sample(velocity: VelocityFn, noise: torch.Tensor, timesteps: torch.Tensor, *, sde_steps: Sequence[int],
               noise_level: float, generator: torch.Generator) -> Trajectory:
    """Sample from ``noise`` ``(B, C, F, h, w)`` along ``timesteps`` (``S + 1`` values of ``t`` from 1 to 0):
    SDE steps at the indices ``sde_steps`` (Flow-GRPO-Fast's window; all of ``range(S)`` for Flow-GRPO), Euler ODE
    steps elsewhere. ``velocity(x, t)`` takes ``t`` ``(B,)``. The SDE noise comes from ``generator`` in step order,
    so the same generator seed reproduces the trajectory.

    Raises:
        ValueError: an SDE step index outside ``0 .. S - 1``, or on the last step (``t_next = 0``: the
            Gaussian degenerates there, flow_grpo never samples it either).
    """
    steps = sorted(set(int(j) for j in sde_steps))
    last = len(timesteps) - 1
    if any(not 0 <= j <= last - 2 for j in steps):
        raise ValueError(f"SDE steps must lie in 0..{last - 2} (the final step goes to t = 0): got {steps}")
    t_max = float(timesteps[1]) if last > 1 else 1.0
    x = noise.float()
    keep: dict[str, list] = {k: [] for k in ("latents", "next_latents", "t", "t_next", "log_probs")}
    b = x.shape[0]
    for i in range(last):
        t_i, t_n = timesteps[i], timesteps[i + 1]
        v = velocity(x, t_i.expand(b)).float().to(x.device)
        if i in steps:
            step = sde_step(x, v, t_i.expand(b), t_n.expand(b), noise_level=noise_level, t_max=t_max,
                            generator=generator)
            for k, val in (("latents", x.cpu()), ("next_latents", step.next.cpu()), ("t", float(t_i)),
                           ("t_next", float(t_n)), ("log_probs", step.log_prob.cpu())):
                keep[k].append(val)
            x = step.next
        else:
            x = x - (t_i - t_n) * v
    return Trajectory(steps=tuple(steps), **{k: tuple(v) for k, v in keep.items()}, final=x.cpu())


def sde_window(num_steps: int, window: int, start: int | None, generator: torch.Generator | None = None) -> tuple[int, ...]:
    """Flow-GRPO-Fast's SDE window: ``window`` consecutive step indices within ``0 .. num_steps - 2``, starting at
    ``start`` or, if None, at a start drawn from ``generator`` (a fresh window per round). ``window >= num_steps - 1``:
    every step but the last (plain Flow-GRPO).

    Raises:
        ValueError: ``window < 1``, ``num_steps < 2`` or a ``start`` that does not fit.
    """
    usable = num_steps - 1
    if window < 1 or usable < 1:
        raise ValueError(f"an SDE window needs >= 1 step of >= 2 sampling steps, got {window} of {num_steps}")
    if window >= usable:
        return tuple(range(usable))
    if start is None:
        start = int(torch.randint(0, usable - window + 1, (1,), generator=generator))
    if not 0 <= start <= usable - window:
        raise ValueError(f"SDE window start {start} with {window} steps does not fit in {usable} steps")
    return tuple(range(start, start + window))
