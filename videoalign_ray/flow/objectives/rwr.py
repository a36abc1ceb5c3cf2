"""Flow-RWR (paper Eq. 9; docs/algorithms.md section 2): flow matching on every video, each weighted by its
reward."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from videoalign_ray.config import JobConfig
from videoalign_ray.flow.losses import flow_rwr_loss
from videoalign_ray.flow.objectives.base import LossContext, Objective, velocity
from videoalign_ray.flow.objectives.sft import flow_matching_batch
from videoalign_ray.flow.schedule import add_noise, velocity_target


class RWRSection(JobConfig):
    """Flow-RWR's knobs."""

    rwr_tau: float = Field(1.0, gt=0, description="RWR: w = exp(r / tau).")
    rwr_normalize: Literal["none", "batch_softmax"] = Field(
        "none", description="RWR: none = exp(r/tau) as in the paper; batch_softmax = B * softmax(r/tau).")


def rwr_loss(ctx: LossContext, batch: dict, gen: torch.Generator):
    """One micro-batch of Flow-RWR: both videos of each row with their own ``t`` and noise, weighted by
    ``reward_chosen`` / ``reward_rejected`` ``(B,)`` (the rows' multi-dimensional reward, already combined)."""
    x0, t, eps, text = flow_matching_batch(ctx, batch, gen, both=True)
    pred = velocity(ctx.engine, add_noise(x0, eps, t).to(ctx.dtype), t.to(ctx.dtype), text)
    rewards = torch.cat([batch["reward_chosen"], batch["reward_rejected"]]).float()
    loss, metrics = flow_rwr_loss(pred, velocity_target(x0, eps), rewards, tau=ctx.args["rwr_tau"],
                                  normalize=ctx.args["rwr_normalize"])
    metrics["loss"] = loss.detach()
    return loss, metrics


OBJECTIVES = {"rwr": Objective(
    name="rwr", title="Flow-RWR", loss=rwr_loss, section=RWRSection, keep_ties=True, needs_rewards=True,
    columns=("chosen", "rejected", "reward_chosen", "reward_rejected"),
    metric_keys=("loss", "weight_mean", "weight_max", "reward_mean"))}
