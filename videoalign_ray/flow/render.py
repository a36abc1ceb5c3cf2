"""Reference-vs-policy samples of a trained flow job (the mp4s at the end of Flow-DPO / RWR / SFT runs).

:func:`render_comparison` loads the models on the device of the process that calls it and is meant to be
called in a Ray task (``runtime.placement.run_model_task``): it returns the files' bytes, so the driver only
writes them (no model on the driver, no shared file system needed between the task and the driver).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from videoalign_ray.flow.generator import load_generator
from videoalign_ray.flow.model import decode_latents, load_transformer
from videoalign_ray.flow.sampling import SamplingSettings, latent_shape, sample_latents


def render_comparison(
    model_dir: str | Path, weights_dir: str | Path, prompts: list[str], *, num_frames: int,
    height: int, width: int, max_text_tokens: int, sampling: SamplingSettings = SamplingSettings(), seed: int = 0,
    fps: int = 8,
) -> dict[str, bytes]:
    """Sample each prompt from the reference (base) and the policy with the same noise (seeded on CPU, so the
    same on any device) and the same ``sampling`` settings (sampler, steps, shift, CFG and negative prompt).

    Returns ``{file name: bytes}``: ``<i>_reference.mp4``, ``<i>_policy.mp4`` (H.264 at ``fps``) and
    ``<i>_prompt.txt`` per prompt ``i``.
    """
    from videoalign_ray.data.encode import write_mp4

    gen = load_generator(model_dir, weights_dir, max_text_tokens=max_text_tokens)
    policy = gen.transformer
    embeds = gen.text.encode(prompts)
    negative = sampling.negative_embeds(gen.text, len(prompts))
    shape = latent_shape(gen.vae.config, num_frames, height, width)
    noise = torch.randn((len(prompts), *shape), generator=torch.Generator().manual_seed(seed))
    kwargs = dict(**sampling.kwargs(model_dir), negative_embeds=negative)
    has_adapter = (Path(weights_dir) / "adapter").is_dir()
    if has_adapter:  # the reference is the same network with the adapters off
        policy.disable_adapters()
        ref_frames = decode_latents(gen.vae, sample_latents(policy, embeds, noise, **kwargs))
        policy.enable_adapters()
    else:
        reference = load_transformer(model_dir, dtype=gen.dtype).eval().to(gen.device)
        ref_frames = decode_latents(gen.vae, sample_latents(reference, embeds, noise, **kwargs))
        del reference
    pol_frames = decode_latents(gen.vae, sample_latents(policy, embeds, noise, **kwargs))
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, prompt in enumerate(prompts):
            for name, frames in (("reference", ref_frames[i]), ("policy", pol_frames[i])):
                path = write_mp4(Path(tmp) / f"{i:02d}_{name}.mp4", frames, fps=fps)
                files[path.name] = path.read_bytes()
            files[f"{i:02d}_prompt.txt"] = (prompt + "\n").encode()
    return files
