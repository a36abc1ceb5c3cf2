"""Flow-matching losses as pure tensor functions: SFT and Flow-DPO (ALGORITHMS.md sections 1-2).

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
