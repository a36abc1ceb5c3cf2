"""The generator's three models loaded together on the calling worker's device, for sampling.

Every place that samples (the samples at the end of a flow job, ``jobs/generate.py``, the synthetic-world
evaluations, the online loop's generation actors) loads them here, inside a Ray task or actor: the transformer in
the compute dtype (bf16 on a CUDA device, float32 on CPU: ``runtime.placement.compute_dtype``; loaded with
``torch_dtype`` so diffusers keeps its ``_keep_in_fp32_modules`` in float32), the VAE in float32 (as diffusers'
Wan examples load it), the text encoder on the same device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from videoalign_ray.errors import ModelPathError


def load_policy(model_dir: str | Path, weights_dir: str | Path, dtype: torch.dtype = torch.float32):
    """The base transformer (in ``dtype``) with the trained weights of ``weights_dir`` (``adapter/`` or
    ``model/``), eval mode. Weights load through safetensors only.

    Raises:
        ModelPathError: neither folder exists. ValueError: the adapter has keys the model lacks.
    """
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    from videoalign_ray.flow.lora_export import read_adapter_state
    from videoalign_ray.flow.model import add_lora, load_transformer

    weights_dir = Path(weights_dir)
    transformer = load_transformer(model_dir, dtype=dtype)
    if (weights_dir / "adapter").is_dir():
        state, rank, alpha = read_adapter_state(weights_dir / "adapter")
        add_lora(transformer, rank, alpha, seed=0)
        result = set_peft_model_state_dict(transformer, state)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"adapter has keys the model lacks: {result.unexpected_keys[:5]}")
    elif (weights_dir / "model").is_dir():
        transformer.load_state_dict(load_file(weights_dir / "model" / "model.safetensors"))
    else:
        raise ModelPathError(f"{weights_dir}: neither adapter/ nor model/")
    return transformer.eval()


@dataclass
class GeneratorModels:
    """Transformer (policy or base), VAE and text encoder on ``device``; ``dtype`` is the transformer's."""

    transformer: Any
    vae: Any
    text: Any
    device: torch.device
    dtype: torch.dtype


def load_generator(model_dir: str | Path, weights_dir: str | Path | None = None, *, max_text_tokens: int,
                   device: torch.device | str | None = None, precision: str = "auto") -> GeneratorModels:
    """Load the base transformer (plus ``weights_dir``'s trained weights, a flow job's ``final/``), the VAE and
    the text encoder on ``device`` (default: :func:`~videoalign_ray.runtime.placement.worker_device`).

    Raises:
        ModelPathError: ``weights_dir`` has neither ``adapter/`` nor ``model/``.
    """
    from videoalign_ray.flow.model import TextEncoder, load_transformer, load_vae
    from videoalign_ray.runtime.placement import compute_dtype, worker_device

    device = torch.device(device) if device is not None else worker_device()
    dtype = compute_dtype(device, precision)
    transformer = (load_policy(model_dir, weights_dir, dtype=dtype) if weights_dir
                   else load_transformer(model_dir, dtype=dtype).eval())
    return GeneratorModels(transformer=transformer.to(device), vae=load_vae(model_dir).to(device),
                           text=TextEncoder(model_dir, max_text_tokens, device), device=device, dtype=dtype)
