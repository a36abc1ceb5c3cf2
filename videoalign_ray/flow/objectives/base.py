"""What an objective declares (:class:`Objective`) and what its loss receives (:class:`LossContext`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from videoalign_ray.flow.schedule import sample_t, to_model_timestep


@dataclass(frozen=True)
class LossContext:
    """What a loss needs besides the batch.

    ``engine``: the DeepSpeed engine or the bare policy module. ``reference``: a frozen reference module, or
    None where the reference is the policy with its LoRA adapters disabled. ``loop``: the loop config (timestep
    sampling knobs ``t_sampling``, ``logit_mean``, ``logit_std``, ``t_shift``). ``args``: the objective's own
    section values (``Objective.args``). ``device`` / ``dtype``: where and in what the model computes.
    """

    engine: Any
    reference: Any
    loop: Any
    args: dict
    device: Any
    dtype: torch.dtype

    @property
    def module(self):
        """The bare model under a DeepSpeed engine (the engine itself when bare)."""
        return getattr(self.engine, "module", self.engine)

    def sample_t(self, b: int, gen: torch.Generator) -> torch.Tensor:
        """``(B,)`` training timesteps in (0, 1) from the loop's timestep distribution, on ``device``."""
        lc = self.loop
        return sample_t(b, mode=lc.t_sampling, logit_mean=lc.logit_mean, logit_std=lc.logit_std, shift=lc.t_shift,
                        generator=gen).to(self.device)

    def reference_velocity(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The reference's velocity without gradient: the frozen copy, or the policy with adapters disabled."""
        with torch.no_grad():
            if self.reference is not None:
                return velocity(self.reference, x_t, t, text)
            self.module.disable_adapters()
            try:
                return velocity(self.engine, x_t, t, text)
            finally:
                self.module.enable_adapters()


def velocity(model, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The model's velocity ``(B, C, F, h, w)`` at latents ``x_t`` and flow time ``t`` ``(B,)`` in [0, 1]
    (scaled to the transformer's 0..1000 timestep), text embeddings ``(B, L, D)``."""
    return model(hidden_states=x_t, timestep=to_model_timestep(t), encoder_hidden_states=text, return_dict=False)[0]


LossFn = Callable[[LossContext, dict, torch.Generator], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


@dataclass(frozen=True)
class Objective:
    """One training objective.

    Attributes:
        name: the config value (``--objective``) and registry key.
        title: human name (model card, logs).
        loss: ``loss(ctx, batch, generator) -> (scalar loss, detached metrics)``; the generator draws every
            random number of the micro-batch (timesteps and noise), so a resumed run replays it.
        metric_keys: keys of the metrics dict, ``loss`` first (averaged over ranks and logged).
        columns: batch columns the loss reads besides ``prompt_embeds`` (the data path must provide them).
        section: pydantic model of the objective's own config fields, or None; a job's config inherits it
            and :meth:`args` takes its values.
        keep_ties: the preference table's tied rows are training data (RWR scores every video).
        uses_reference: the loss compares with a reference model (``--reference-weights`` allowed).
        needs_rewards: rows carry ``reward_chosen`` / ``reward_rejected``.
        online_batches: for the colocated online loop, ``online_batches(held, items, micro_batch) -> [batch]``:
            the micro-batches of one worker's round from what it sampled (``held``: prompt index ->
            ``{"trajectory": flow.sde.Trajectory, "prompt_embeds": (K, L, D), "t_max": float}``) and the
            driver's per-prompt ``items`` (advantages, pairs, ...); None: not trainable online.
        sde: the online loop samples with SDE steps (their log-probabilities are part of the batch).
    """

    name: str
    title: str
    loss: LossFn
    metric_keys: tuple[str, ...]
    columns: tuple[str, ...] = ("chosen", "rejected")
    section: type | None = None
    keep_ties: bool = False
    uses_reference: bool = False
    needs_rewards: bool = False
    online_batches: Callable | None = None
    sde: bool = False

    def args(self, cfg) -> dict:
        """The values of this objective's section fields on ``cfg`` (any object with those attributes)."""
        if self.section is None:
            return {}
        return {k: getattr(cfg, k) for k in self.section.model_fields}
