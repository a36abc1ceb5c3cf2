"""Held-out evaluation inside a Flow-DPO / Flow-RWR / SFT training worker: the objective's loss and metrics on
validation pairs, and reference-vs-policy samples of validation prompts (the same noise for both), as the
diffusers training scripts do with ``--validation_prompt``.

Both run where the model is (the Ray Train worker, on its GPU when it has one); nothing is loaded on the driver.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch


def stack_rows(rows: list[dict]) -> dict:
    """Loaded rows (``{column: array}``) -> a batch ``{column: (B, ...) tensor}`` of their numeric columns."""
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if isinstance(values[0], np.ndarray) and values[0].dtype.kind in "biuf":
            out[key] = torch.from_numpy(np.stack(values))
        elif isinstance(values[0], (int, float, np.number)):
            out[key] = torch.tensor(values)
    return out


@torch.no_grad()
def heldout_metrics(loss_fn: Callable[[dict, torch.Generator], tuple[torch.Tensor, dict]], rows: list[dict],
                    micro_batch: int, seed: int, keys: tuple[str, ...], *, num_batches: int = 0,
                    padding: list[dict] | None = None) -> tuple[dict[str, float], int]:
    """The mean of each metric of ``loss_fn`` over ``rows`` (this rank's validation pairs) in micro-batches;
    returns ``({key: sum over pairs}, pairs)`` so ranks can be combined by weight.

    ``loss_fn(batch, generator) -> (loss, metrics)`` is the training objective; the generator of micro-batch
    ``i`` is seeded by ``(seed, i)``, so every evaluation sees the same ``t`` and noise and the numbers move only
    with the weights. ``num_batches``: run extra (uncounted) forwards on ``padding`` rows up to this many
    micro-batches, so that ranks with fewer pairs still join every collective of a partitioned (ZeRO-3) model.
    """
    sums = dict.fromkeys(keys, 0.0)
    chunks = [rows[i:i + micro_batch] for i in range(0, len(rows), micro_batch)]
    for i, chunk in enumerate(chunks):
        _, metrics = loss_fn(stack_rows(chunk), torch.Generator().manual_seed(seed * 1_000_003 + 7_919 + i))
        for k in keys:
            if k in metrics:
                sums[k] += float(metrics[k]) * len(chunk)
    for _ in range(len(chunks), num_batches):  # ZeRO-3: every rank runs as many forwards as the busiest one
        loss_fn(stack_rows(padding[:micro_batch]), torch.Generator().manual_seed(seed))
    return sums, len(rows)


@contextlib.contextmanager
def adapters_disabled(model):
    """The LoRA network with its adapters off (the reference of a LoRA run) for the block."""
    model.disable_adapters()
    try:
        yield model
    finally:
        model.enable_adapters()


@torch.no_grad()
def sample_pairs(policy, reference, vae, prompt_embeds: torch.Tensor, latent_shape: tuple[int, ...], *, seed: int,
                 num_steps: int, shift: float = 1.0, guidance_scale: float = 1.0,
                 negative_embeds: torch.Tensor | None = None, scheduler=None) -> tuple[np.ndarray, np.ndarray]:
    """Reference and policy videos from the same noise: uint8 ``(B, T, H, W, 3)`` each.

    ``reference`` None: ``policy`` is a LoRA network and its adapters-off self is the reference.
    ``prompt_embeds``: ``(B, L, D)``; ``latent_shape``: ``(C, F, h, w)``.
    """
    from videoalign_ray.flow.model import decode_latents
    from videoalign_ray.flow.sampling import sample_latents

    noise = torch.randn((prompt_embeds.shape[0], *latent_shape), generator=torch.Generator().manual_seed(seed))
    kwargs = dict(num_steps=num_steps, shift=shift, guidance_scale=guidance_scale, negative_embeds=negative_embeds,
                  scheduler=scheduler)
    was_training = policy.training
    policy.eval()
    try:
        if reference is None:
            with adapters_disabled(policy):
                ref = sample_latents(policy, prompt_embeds, noise, **kwargs)
        else:
            ref = sample_latents(reference, prompt_embeds, noise, **kwargs)
        pol = sample_latents(policy, prompt_embeds, noise, **kwargs)
    finally:
        policy.train(was_training)
    return decode_latents(vae, ref), decode_latents(vae, pol)
