"""Load a trained policy (base + LoRA adapter or full weights) and render reference vs policy samples."""

from __future__ import annotations

from pathlib import Path

import torch

from videoalign_ray.errors import ModelPathError
from videoalign_ray.flow.model import TextEncoder, add_lora, decode_latents, load_transformer, load_vae
from videoalign_ray.flow.sampling import latent_shape, sample_latents


def load_policy(model_dir: str | Path, weights_dir: str | Path):
    """The base transformer with the trained weights of ``weights_dir`` (``adapter/`` or ``model/``).

    Weights load through safetensors only. Raises FileNotFoundError when neither folder exists.
    """
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    from videoalign_ray.flow.lora_export import read_adapter_state

    weights_dir = Path(weights_dir)
    transformer = load_transformer(model_dir)
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


def render_comparison(
    model_dir: str | Path, weights_dir: str | Path, prompts: list[str], out_dir: str | Path, *, num_frames: int,
    height: int, width: int, max_text_tokens: int, steps: int = 20, guidance: float = 1.0, shift: float = 1.0,
    seed: int = 0, fps: int = 8,
) -> list[Path]:
    """Sample each prompt from the reference (base) and the policy with the same noise; write mp4 pairs.

    Returns the written paths (``<i>_reference.mp4``, ``<i>_policy.mp4``).
    """
    from videoalign_ray.data.video import write_mp4

    out_dir = Path(out_dir)
    policy = load_policy(model_dir, weights_dir)
    vae = load_vae(model_dir)
    text = TextEncoder(model_dir, max_text_tokens)
    embeds = text.encode(prompts)
    negative = text.encode([""] * len(prompts)) if guidance > 1 else None
    shape = latent_shape(vae.config, num_frames, height, width)
    noise = torch.randn((len(prompts), *shape), generator=torch.Generator().manual_seed(seed))
    paths = []
    kwargs = dict(num_steps=steps, shift=shift, guidance_scale=guidance, negative_embeds=negative)
    has_adapter = (Path(weights_dir) / "adapter").is_dir()
    reference = policy if has_adapter else load_transformer(model_dir).eval()
    if has_adapter:
        policy.disable_adapters()
    ref_frames = decode_latents(vae, sample_latents(reference, embeds, noise, **kwargs))
    if has_adapter:
        policy.enable_adapters()
    pol_frames = decode_latents(vae, sample_latents(policy, embeds, noise, **kwargs))
    for i, prompt in enumerate(prompts):
        for name, frames in (("reference", ref_frames[i]), ("policy", pol_frames[i])):
            paths.append(write_mp4(out_dir / f"{i:02d}_{name}.mp4", frames, fps=fps))
        (out_dir / f"{i:02d}_prompt.txt").write_text(prompt + "\n")
    return paths
