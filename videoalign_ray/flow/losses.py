"""Flow-matching losses as pure tensor functions: SFT, Flow-DPO and Flow-RWR (docs/algorithms.md sections 1-2).

Shapes: latents / velocities ``(B, C, F, H, W)``; per-sample errors ``(B,)``; float32 results.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over every non-batch dimension of ``(pred - target)^2``; returns ``(B,)`` float32."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def sft_loss(pred_velocity: torch.Tensor, target_velocity: torch.Tensor) -> torch.Tensor:
    """Plain flow-matching loss (the SFT baseline): mean over the batch of :func:`per_sample_mse`."""
    return per_sample_mse(pred_velocity, target_velocity).mean()


def flow_dpo_loss(
    policy_err_chosen: torch.Tensor,
    policy_err_rejected: torch.Tensor,
    ref_err_chosen: torch.Tensor,
    ref_err_rejected: torch.Tensor,
    *,
    beta: float = 500.0,
    t: torch.Tensor | None = None,
    beta_schedule: Literal["constant", "time_dependent"] = "constant",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Flow-DPO (paper Eq. 6 with constant beta; Diffusion-DPO with the flow-matching error).

    ``inside = -0.5 * beta_t * ((err_pol(w) - err_ref(w)) - (err_pol(l) - err_ref(l)))`` and
    ``loss = -logsigmoid(inside).mean()``, where every ``err`` is the per-sample MSE ``(B,)`` of the
    velocity prediction for the chosen (w) / rejected (l) video, computed with ONE shared ``t`` and ``eps``
    per pair. ``beta_t = beta`` (default) or ``beta * (1 - t)^2`` (``time_dependent``, an ablation that the
    paper shows reward-hacks; needs ``t`` of shape ``(B,)``).

    Returns:
        (scalar loss, detached metrics: implicit_acc, inside_mean, chosen_gap, rejected_gap, kl_proxy).

    Raises:
        ValueError: ``time_dependent`` without ``t``, or an unknown schedule.
    """
    if beta_schedule == "constant":
        beta_t = torch.full_like(policy_err_chosen, float(beta))
    elif beta_schedule == "time_dependent":
        if t is None:
            raise ValueError("beta_schedule='time_dependent' needs t")
        beta_t = beta * (1 - t.to(policy_err_chosen.dtype)) ** 2
    else:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}")
    chosen_gap = policy_err_chosen - ref_err_chosen
    rejected_gap = policy_err_rejected - ref_err_rejected
    inside = -0.5 * beta_t * (chosen_gap - rejected_gap)
    loss = -F.logsigmoid(inside).mean()
    metrics = {
        "implicit_acc": (inside > 0).float().mean().detach(),
        "inside_mean": inside.mean().detach(),
        "chosen_gap": chosen_gap.mean().detach(),
        "rejected_gap": rejected_gap.mean().detach(),
        "kl_proxy": (0.5 * (chosen_gap + rejected_gap)).mean().detach(),
    }
    return loss, metrics


def combine_rewards(rewards: torch.Tensor, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """Multi-objective reward: the weighted mean ``sum_d w_d r_d / sum_d w_d`` of ``rewards`` ``(N, 3)``
    (normalised VQ, MQ, TA) -> ``(N,)`` float32. With equal weights this is docs/algorithms.md section 2's
    ``(r_VQ + r_MQ + r_TA) / 3``.

    Raises:
        ValueError: weights not 3 non-negative numbers with a positive sum.
    """
    w = torch.as_tensor(weights, dtype=torch.float32)
    if w.shape != (3,) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"reward weights must be 3 non-negative numbers with a positive sum, got {weights}")
    return (rewards.float() * w).sum(dim=-1) / w.sum()


def rwr_weights(
    rewards: torch.Tensor, *, tau: float = 1.0, normalize: Literal["none", "batch_softmax"] = "none"
) -> torch.Tensor:
    """Flow-RWR sample weights ``(B,)`` from rewards ``(B,)`` (paper Eq. 9 with a temperature).

    ``none``: ``w = exp(r / tau)``; ``batch_softmax``: ``w = B * softmax(r / tau)`` (mean weight 1, so a
    batch of equal rewards gets weight 1 everywhere). Weights carry no gradient.

    Raises:
        ValueError: ``tau <= 0`` or an unknown normalisation.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    z = rewards.detach().float() / tau
    if normalize == "none":
        return torch.exp(z)
    if normalize == "batch_softmax":
        return torch.softmax(z, dim=0) * z.shape[0]
    raise ValueError(f"unknown RWR normalisation {normalize!r}")


def flow_rwr_loss(
    pred_velocity: torch.Tensor,
    target_velocity: torch.Tensor,
    rewards: torch.Tensor,
    *,
    tau: float = 1.0,
    normalize: Literal["none", "batch_softmax"] = "none",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Flow-RWR (paper Eq. 9): ``mean_b(w_b * per_sample_mse_b)`` with ``w = rwr_weights(rewards)``.

    ``pred_velocity`` / ``target_velocity``: ``(B, C, F, H, W)``; ``rewards``: ``(B,)``. With ``w = 1`` this
    is :func:`sft_loss`. Returns (scalar loss, detached metrics: weight_mean, weight_max, reward_mean).
    """
    w = rwr_weights(rewards, tau=tau, normalize=normalize).to(pred_velocity.device)
    loss = (w * per_sample_mse(pred_velocity, target_velocity)).mean()
    metrics = {"weight_mean": w.mean().detach(), "weight_max": w.max().detach(),
               "reward_mean": rewards.detach().float().mean()}
    return loss, metrics
