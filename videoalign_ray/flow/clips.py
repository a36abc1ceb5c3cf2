"""Micro-batches of clips of different lengths (``--short-clips trim``): one common length per micro-batch.

Pure tensor code, no I/O.
"""

from __future__ import annotations

import numpy as np
import torch

LATENT_KEYS = ("chosen", "rejected")


def common_frames(batch: dict) -> dict:
    """``batch`` with its ``chosen`` / ``rejected`` latents cut to the fewest latent frames among them and stacked.

    Each is a ``(B, C, F, h, w)`` tensor, or, when clips were trimmed to different lengths, a ``(B,)`` object
    array of ``(C, F_i, h, w)`` arrays (the cache loader's ragged form). The cut keeps the first ``F_min`` latent
    frames: Wan's VAE is causal in time (latent frame ``k`` sees input frames ``<= 4k``), so they encode the
    first ``4 (F_min - 1) + 1`` frames of the longer clip: a shorter window of the same clip at the same rate.
    Other keys pass through. Returns a new dict of float32 ``(B, C, F_min, h, w)`` tensors for those keys.

    Raises:
        ValueError: the latents differ in anything but their frame count.
    """
    present = [k for k in LATENT_KEYS if k in batch]
    items = {k: _as_list(batch[k]) for k in present}
    shapes = {tuple(x.shape[:1] + x.shape[2:]) for xs in items.values() for x in xs}
    if len(shapes) > 1:
        raise ValueError(f"latents of one micro-batch differ in more than their frame count: {sorted(shapes)}")
    f_min = min((x.shape[1] for xs in items.values() for x in xs), default=0)
    out = dict(batch)
    for k, xs in items.items():
        out[k] = torch.stack([x[:, :f_min] for x in xs]).float()
    return out


def _as_list(value) -> list[torch.Tensor]:
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [torch.as_tensor(np.asarray(v)) for v in value]
    return list(torch.as_tensor(value))
