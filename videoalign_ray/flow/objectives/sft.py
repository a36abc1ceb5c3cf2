"""Plain flow matching (docs/algorithms.md section 1's SFT baseline): ``sft`` on the chosen video of each pair,
``pretrain`` on both videos (every video is a training sample, good or bad)."""

from __future__ import annotations

import torch

from videoalign_ray.flow.clips import common_frames
from videoalign_ray.flow.losses import per_sample_mse
from videoalign_ray.flow.objectives.base import LossContext, Objective, velocity
from videoalign_ray.flow.schedule import add_noise, velocity_target


def flow_matching_batch(ctx: LossContext, batch: dict, gen: torch.Generator, both: bool):
    """``(x0, t, eps, text)`` of a micro-batch: the chosen latents ``(B, C, F, h, w)`` with ``t`` ``(B,)`` then
    ``eps`` drawn from ``gen``; with ``both`` the rejected ones follow with their own ``t`` and ``eps`` (2B rows)."""
    batch = common_frames(batch)
    x_w = batch["chosen"].to(device=ctx.device, dtype=torch.float32)
    text = batch["prompt_embeds"].to(device=ctx.device, dtype=ctx.dtype)
    t = ctx.sample_t(x_w.shape[0], gen)
    eps = torch.randn(x_w.shape, generator=gen).to(ctx.device)
    if not both:
        return x_w, t, eps, text
    x_l = batch["rejected"].to(device=ctx.device, dtype=torch.float32)
    t2 = ctx.sample_t(x_l.shape[0], gen)
    eps2 = torch.randn(x_l.shape, generator=gen).to(ctx.device)
    return torch.cat([x_w, x_l]), torch.cat([t, t2]), torch.cat([eps, eps2]), torch.cat([text, text])


def _flow_matching_loss(both: bool):
    def loss_fn(ctx: LossContext, batch: dict, gen: torch.Generator):
        x0, t, eps, text = flow_matching_batch(ctx, batch, gen, both)
        pred = velocity(ctx.engine, add_noise(x0, eps, t).to(ctx.dtype), t.to(ctx.dtype), text)
        loss = per_sample_mse(pred, velocity_target(x0, eps)).mean()
        return loss, {"loss": loss.detach()}

    loss_fn.__doc__ = (f"Flow-matching MSE of the velocity on {'both videos' if both else 'the chosen video'} of "
                       "each pair (``t`` then ``eps`` from the generator).")
    return loss_fn


OBJECTIVES = {
    "sft": Objective(name="sft", title="SFT (flow matching on chosen videos)", loss=_flow_matching_loss(False),
                     metric_keys=("loss",), columns=("chosen",)),
    "pretrain": Objective(name="pretrain", title="flow-matching pre-training", loss=_flow_matching_loss(True),
                          metric_keys=("loss",)),
}
