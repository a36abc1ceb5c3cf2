"""Flow-GRPO (Liu et al. 2025, arXiv 2505.05470, Eq. 7-11; yifan123/flow_grpo ``train_sd3.py`` / ``train_wan2_1.py``):
on-policy RL on the flow generator's own SDE samples.

For each prompt, K videos are sampled with :func:`videoalign_ray.flow.sde.sde_sample`; their rewards become
group-normalised advantages (:func:`group_advantages`); each stored SDE step ``x_j -> x_{j+1}`` gives the
clipped importance-ratio loss ``max(-A r, -A clip(r, 1 - eps, 1 + eps))``, ``r = exp(log p_theta - log p_old)``,
plus ``kl_beta`` times the KL of the policy's step Gaussian to the reference's
(``|mean - mean_ref|^2 / (2 s_t^2)``, flow_grpo's form).
"""

from __future__ import annotations

import torch
from pydantic import Field

from videoalign_ray.config import JobConfig
from videoalign_ray.flow.objectives.base import LossContext, Objective, velocity
from videoalign_ray.flow.sde import sde_step


class GRPOSection(JobConfig):
    """Flow-GRPO's knobs (defaults: flow_grpo's ``config/grpo.py`` where it has one)."""

    noise_level: float = Field(0.7, gt=0, description="SDE noise level a: s_t = a sqrt(t / (1 - t)).")
    clip_range: float = Field(1e-4, gt=0, description="Importance-ratio clip eps: r kept in [1 - eps, 1 + eps].")
    adv_clip_max: float = Field(5.0, gt=0, description="Advantages clipped to [-max, max].")
    kl_beta: float = Field(0.04, ge=0, description="Weight of the KL to the reference (0: no reference pass).")
    cfg_scale: float = Field(1.0, ge=1, description="CFG scale while sampling and in the loss (the same velocity "
                             "both times, negative prompt ''); 1: no CFG.")


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-prompt group-normalised advantages (Flow-GRPO Eq. 8): ``(r - mean_g) / std_g`` over each row of
    ``rewards`` ``(G, K)`` (G prompts, K samples each; population std). A group whose std is below ``eps``
    (equal rewards) gets zeros, not NaN. Returns ``(G, K)`` float32.

    Raises:
        ValueError: ``rewards`` not 2-D or fewer than 2 samples per group.
    """
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (groups, K >= 2), got {tuple(rewards.shape)}")
    r = rewards.double()
    mean, std = r.mean(dim=1, keepdim=True), r.std(dim=1, unbiased=False, keepdim=True)
    adv = torch.where(std > eps, (r - mean) / std.clamp_min(eps), torch.zeros_like(r))
    return adv.float()


def clipped_policy_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, *,
                        clip_range: float, adv_clip_max: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip surrogate (Flow-GRPO Eq. 7): ``mean(max(-A r, -A clip(r, 1-eps, 1+eps)))`` over ``(B,)`` inputs,
    ``r = exp(log_prob - old_log_prob)``, ``A`` clipped to ``[-adv_clip_max, adv_clip_max]``. Returns (loss,
    detached metrics ``ratio_mean``, ``clipfrac``, ``approx_kl``)."""
    adv = advantages.float().clamp(-adv_clip_max, adv_clip_max)
    ratio = torch.exp(log_prob.float() - old_log_prob.float())
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range)).mean()
    metrics = {"ratio_mean": ratio.mean().detach(),
               "clipfrac": ((ratio - 1).abs() > clip_range).float().mean().detach(),
               "approx_kl": (0.5 * (log_prob.float() - old_log_prob.float()) ** 2).mean().detach()}
    return loss, metrics


def _cfg_velocity(ctx: LossContext, model_fn, x: torch.Tensor, t: torch.Tensor, batch: dict) -> torch.Tensor:
    text = batch["prompt_embeds"].to(ctx.device, ctx.dtype)
    v = model_fn(x, t, text).float()
    scale = ctx.args.get("cfg_scale", 1.0)
    if scale > 1:
        v_neg = model_fn(x, t, batch["negative_embeds"].to(ctx.device, ctx.dtype)).float()
        v = v_neg + scale * (v - v_neg)
    return v


def grpo_loss(ctx: LossContext, batch: dict, gen: torch.Generator):
    """One micro-batch of stored SDE steps.

    ``batch``: ``latents`` / ``next_latents`` ``(B, C, F, h, w)`` (a step's input and the sampled output),
    ``t`` / ``t_next`` ``(B,)``, ``log_prob`` ``(B,)`` under the sampling policy, ``advantage`` ``(B,)``,
    ``t_max`` (the schedule's second ``t``), ``prompt_embeds`` ``(B, L, D)`` (``negative_embeds`` with CFG).
    ``gen`` is unused (the step's randomness is in the stored sample). Returns (loss, metrics).
    """
    x = batch["latents"].to(ctx.device, torch.float32)
    nxt = batch["next_latents"].to(ctx.device, torch.float32)
    t, t_next = batch["t"].to(ctx.device).float(), batch["t_next"].to(ctx.device).float()
    t_max = float(batch["t_max"])
    xin = x.to(ctx.dtype)

    def policy(xi, ti, text):
        return velocity(ctx.engine, xi, ti.to(ctx.dtype), text)

    step = sde_step(x, _cfg_velocity(ctx, policy, xin, t, batch), t, t_next, noise_level=ctx.args["noise_level"],
                    t_max=t_max, next_latents=nxt)
    loss, metrics = clipped_policy_loss(step.log_prob, batch["log_prob"].to(ctx.device), batch["advantage"].to(ctx.device),
                                        clip_range=ctx.args["clip_range"], adv_clip_max=ctx.args["adv_clip_max"])
    metrics["policy_loss"] = loss.detach()
    kl = torch.zeros((), device=loss.device)
    if ctx.args["kl_beta"] > 0:
        v_ref = _cfg_velocity(ctx, lambda xi, ti, text: ctx.reference_velocity(xi, ti.to(ctx.dtype), text), xin, t, batch)
        ref = sde_step(x, v_ref, t, t_next, noise_level=ctx.args["noise_level"], t_max=t_max, next_latents=nxt)
        kl = (((step.mean - ref.mean) ** 2).flatten(1).mean(dim=1) / (2 * step.std**2)).mean()
        loss = loss + ctx.args["kl_beta"] * kl
    metrics.update(kl=kl.detach(), loss=loss.detach(), advantage_mean=batch["advantage"].float().mean())
    return loss, metrics


def grpo_batches(held: dict, items: dict, micro_batch: int) -> list[dict]:
    """Micro-batches of stored SDE steps: per prompt (ascending), per SDE step, ``micro_batch`` samples; ``items``:
    prompt index -> the K samples' advantages.

    Raises:
        KeyError: a held prompt without advantages.
    """
    rows = []
    for idx in sorted(held):
        h, adv = held[idx], torch.tensor(items[idx], dtype=torch.float32)
        traj = h["trajectory"]
        for j in range(len(traj.steps)):
            k = traj.latents[j].shape[0]
            for s in range(0, k, micro_batch):
                sl = slice(s, min(k, s + micro_batch))
                n = sl.stop - sl.start
                rows.append({"latents": traj.latents[j][sl], "next_latents": traj.next_latents[j][sl],
                             "t": torch.full((n,), traj.t[j]), "t_next": torch.full((n,), traj.t_next[j]),
                             "log_prob": traj.log_probs[j][sl], "advantage": adv[sl], "t_max": h["t_max"],
                             "prompt_embeds": h["prompt_embeds"][sl]})
                if h.get("negative_embeds") is not None:
                    rows[-1]["negative_embeds"] = h["negative_embeds"][sl]
    return rows


OBJECTIVES = {"grpo": Objective(
    name="grpo", title="Flow-GRPO", loss=grpo_loss, section=GRPOSection, uses_reference=True,
    online_batches=grpo_batches, sde=True,
    columns=("latents", "next_latents", "t", "t_next", "log_prob", "advantage"),
    metric_keys=("loss", "policy_loss", "kl", "ratio_mean", "clipfrac", "approx_kl", "advantage_mean"))}
