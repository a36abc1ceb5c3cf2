"""Flow-DPO (paper Eq. 6; docs/algorithms.md section 1): the policy's flow-matching error on the chosen video
relative to the reference's, against the same on the rejected one, one shared ``t`` and noise per pair."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from videoalign_ray.config import JobConfig
from videoalign_ray.flow.clips import common_frames
from videoalign_ray.flow.losses import flow_dpo_loss, per_sample_mse
from videoalign_ray.flow.objectives.base import LossContext, Objective, velocity
from videoalign_ray.flow.schedule import add_noise, velocity_target


class DPOSection(JobConfig):
    """Flow-DPO's knobs."""

    beta: float = Field(500.0, gt=0, description="Flow-DPO beta (paper: 500 with per-sample mean error).")
    beta_schedule: Literal["constant", "time_dependent"] = Field(
        "constant", description="time_dependent = beta*(1-t)^2, an ablation that reward-hacks (paper Tab. 3/4).")


def dpo_loss(ctx: LossContext, batch: dict, gen: torch.Generator):
    """One micro-batch of Flow-DPO.

    ``batch``: ``chosen`` / ``rejected`` latents ``(B, C, F, h, w)``, ``prompt_embeds`` ``(B, L, D)``. ``gen``
    draws ``t`` ``(B,)`` then ``eps`` ``(B, C, F, h, w)``, shared by the two videos of a pair. Returns
    (loss, metrics ``flow_dpo_loss`` reports).
    """
    batch = common_frames(batch)  # clips trimmed to different lengths: the micro-batch's shortest
    x_w = batch["chosen"].to(device=ctx.device, dtype=torch.float32)
    x_l = batch["rejected"].to(device=ctx.device, dtype=torch.float32)
    text = batch["prompt_embeds"].to(device=ctx.device, dtype=ctx.dtype)
    b = x_w.shape[0]
    t = ctx.sample_t(b, gen)
    eps = torch.randn(x_w.shape, generator=gen).to(ctx.device)
    x_t = torch.cat([add_noise(x_w, eps, t), add_noise(x_l, eps, t)]).to(ctx.dtype)
    tt = torch.cat([t, t]).to(ctx.dtype)
    target = torch.cat([velocity_target(x_w, eps), velocity_target(x_l, eps)])
    text2 = torch.cat([text, text])
    ref_pred = ctx.reference_velocity(x_t, tt, text2)
    pred = velocity(ctx.engine, x_t, tt, text2)
    pol_err, ref_err = per_sample_mse(pred, target), per_sample_mse(ref_pred, target)
    loss, metrics = flow_dpo_loss(pol_err[:b], pol_err[b:], ref_err[:b], ref_err[b:], beta=ctx.args["beta"], t=t,
                                  beta_schedule=ctx.args["beta_schedule"])
    metrics["loss"] = loss.detach()
    return loss, metrics


def dpo_online_batches(held: dict, items: dict, micro_batch: int) -> list[dict]:
    """Micro-batches of ``micro_batch`` pairs from the samples a worker holds: ``items``: prompt index ->
    ``[(chosen sample, rejected sample), ...]`` (indices into that prompt's K samples); latents are the
    samples' clean latents, in prompt then pair order."""
    pairs = [(idx, c, r) for idx in sorted(items) for c, r in items[idx]]
    rows = []
    for s in range(0, len(pairs), micro_batch):
        part = pairs[s : s + micro_batch]
        rows.append({"chosen": torch.stack([held[i]["trajectory"].final[c] for i, c, _ in part]),
                     "rejected": torch.stack([held[i]["trajectory"].final[r] for i, _, r in part]),
                     "prompt_embeds": torch.stack([held[i]["prompt_embeds"][c] for i, c, _ in part])})
    return rows


OBJECTIVES = {"dpo": Objective(
    name="dpo", title="Flow-DPO", loss=dpo_loss, section=DPOSection, uses_reference=True,
    online_batches=dpo_online_batches,
    metric_keys=("loss", "implicit_acc", "inside_mean", "chosen_gap", "rejected_gap", "kl_proxy"))}
