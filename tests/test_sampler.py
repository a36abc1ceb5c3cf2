"""The sampler against diffusers' own WanPipeline: the same scheduler (UniPC with flow sigmas, Wan's default
flow shift), the same CFG and the same prompt cleaning give the same latents."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from videoalign_ray.config import validate_config
from videoalign_ray.flow.sampling import (
    WAN_NEGATIVE_PROMPT,
    WAN_UNIPC_DEFAULTS,
    negative_prompt_text,
    prompt_clean,
    resolve_scheduler,
    sample_latents,
    sampler_name,
)


def _wan_folder(tmp_path):
    """The tiny-world generator folder plus the scheduler config a real Wan2.1 folder ships."""
    from diffusers import UniPCMultistepScheduler

    from videoalign_ray.flow.model import TINY_WORLD_ASSET

    folder = tmp_path / "wan-like"
    shutil.copytree(TINY_WORLD_ASSET, folder)
    UniPCMultistepScheduler(**WAN_UNIPC_DEFAULTS).save_pretrained(folder / "scheduler")
    return folder


def test_prompt_clean_is_wanpipelines():
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean as diffusers_prompt_clean

    texts = ["  a cat &amp;amp; a dog\n\t running  ", "caf\u00c3\u00a9 au lait", "fish &lt;3 chips", "", "plain"]
    assert [prompt_clean(t) for t in texts] == [diffusers_prompt_clean(t) for t in texts]
    assert prompt_clean("  a cat &amp;amp; a dog\n\t running  ") == "a cat & a dog running"
    assert prompt_clean("caf\u00c3\u00a9") == "caf\u00e9"  # ftfy repairs mojibake, as in diffusers with ftfy
    assert negative_prompt_text("wan") == WAN_NEGATIVE_PROMPT and negative_prompt_text("") == ""


def test_scheduler_choice(tmp_path):
    from videoalign_ray.flow.model import TINY_WORLD_ASSET

    folder = _wan_folder(tmp_path)
    assert resolve_scheduler("auto", TINY_WORLD_ASSET) is None  # tiny presets: Euler
    assert sampler_name(resolve_scheduler("auto", folder)) == "UniPCMultistepScheduler(shift=3.0)"
    assert sampler_name(resolve_scheduler("unipc", TINY_WORLD_ASSET)) == "UniPCMultistepScheduler(shift=3.0)"
    assert sampler_name(resolve_scheduler("unipc", folder, shift=5.0)) == "UniPCMultistepScheduler(shift=5.0)"
    assert resolve_scheduler("euler", folder) is None
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000}))
    with pytest.raises(ValueError, match="DDIMScheduler"):
        resolve_scheduler("auto", folder)


@pytest.mark.parametrize("cfg_scale", [1.0, 5.0])
def test_unipc_sampling_equals_wanpipeline(tmp_path, cfg_scale):
    """``sample_latents`` with the folder's scheduler equals ``WanPipeline(...)`` (its scheduler loaded from the
    same folder, default flow shift 3.0) on the same noise and embeddings, with and without CFG."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    from videoalign_ray.flow.model import load_transformer

    folder = _wan_folder(tmp_path)
    transformer = load_transformer(folder).eval()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 3, 5, 32, 32, generator=g)  # (B, C, F, h, w): 9 frames, 32x32 pixel-space latents
    embeds, negative = torch.randn(2, 16, 384, generator=g), torch.randn(2, 16, 384, generator=g)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                       scheduler=UniPCMultistepScheduler.from_pretrained(folder / "scheduler"))
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        want = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, latents=noise.clone(), height=32,
                    width=32, num_frames=9, num_inference_steps=8, guidance_scale=cfg_scale,
                    output_type="latent").frames
    got = sample_latents(transformer, embeds, noise, num_steps=8, guidance_scale=cfg_scale,
                         negative_embeds=negative, scheduler=resolve_scheduler("auto", folder))
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-5
    # and it is not Euler's answer: the test can tell the samplers apart
    euler = sample_latents(transformer, embeds, noise, num_steps=8, shift=3.0, guidance_scale=cfg_scale,
                           negative_embeds=negative)
    assert (euler - want).abs().max().item() > 1e-3


def test_generate_job_samples_with_the_folders_scheduler(local_ray, tmp_path):
    """jobs/generate.py on a folder that ships Wan's scheduler samples with it (UniPC, shift 3.0, CFG with the
    empty negative prompt), and its sampler's videos equal WanPipeline's latents decoded with the same VAE."""
    import numpy as np
    from diffusers import UniPCMultistepScheduler, WanPipeline

    from videoalign_ray.flow.model import TextEncoder, decode_latents, load_transformer, load_vae
    from videoalign_ray.flow.sampling import latent_shape
    from videoalign_ray.pipelines.generate import GenerateConfig, SamplerActor, run_generate

    folder = _wan_folder(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompt = "a red circle moving left to right"
    prompts.write_text(prompt + "\n")
    cfg = validate_config(GenerateConfig, dict(output_dir=str(tmp_path / "gen"), prompts=str(prompts),
                                               samples_per_prompt=1, sample_steps=6, cfg_scale=4.0,
                                               model_path=str(folder), preset="tiny-world"))
    g = run_generate(cfg)
    assert g["sampler"] == "UniPCMultistepScheduler(shift=3.0)" and g["videos"] == 1
    got = SamplerActor(cfg.effective(), str(folder)).videos([prompt], [0])[0]  # the job's sampling, before H.264

    vae, text = load_vae(folder), TextEncoder(folder, 16)
    noise = torch.randn(latent_shape(vae.config, 8, 32, 32), generator=torch.Generator().manual_seed(0))[None]
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=load_transformer(folder).eval(),
                       scheduler=UniPCMultistepScheduler.from_pretrained(folder / "scheduler"))
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        latents = pipe(prompt_embeds=text.encode([prompt]), negative_prompt_embeds=text.encode([""]), latents=noise,
                       height=32, width=32, num_frames=8, num_inference_steps=6, guidance_scale=4.0,
                       output_type="latent").frames
    want = decode_latents(vae, latents)[0]
    assert got.shape == want.shape
    # equal up to rounding at a pixel level boundary (Euler at shift 3 differs by ~3 levels on average)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_prompts_are_cleaned_before_tokenizing_and_keyed_by_the_rule():
    from videoalign_ray.data.cache import PROMPT_RULE, prompt_key
    from videoalign_ray.flow.model import TINY_WORLD_ASSET, TextEncoder

    text = TextEncoder(TINY_WORLD_ASSET, 16)
    messy, clean = text.encode(["  a red &amp; blue\n circle "]), text.encode(["a red & blue circle"])
    assert torch.equal(messy, clean)
    assert not torch.equal(clean, text.encode(["a red blue circle"]))
    import hashlib

    old = hashlib.sha256(b"prompt\0a cat\0enc\x0016").hexdigest()[:32]  # the key before prompts were cleaned
    assert prompt_key("a cat", "enc", 16) != old and PROMPT_RULE in "wan-prompt-clean"


def test_sampling_a_bf16_wan_loaded_as_diffusers_loads_it():
    """``from_pretrained(torch_dtype=bf16)`` keeps ``scale_shift_table`` (the first parameter) in float32: the
    sampler must take the model's compute dtype from diffusers' ``dtype``, not from its first parameter (it fed
    float32 inputs to bf16 convolutions and failed)."""
    from videoalign_ray.flow.model import TINY_WORLD_ASSET, load_transformer

    model = load_transformer(TINY_WORLD_ASSET, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.float32 and model.dtype == torch.bfloat16
    g = torch.Generator().manual_seed(0)
    out = sample_latents(model, torch.randn(1, 16, 384, generator=g), torch.randn(1, 3, 4, 32, 32, generator=g),
                         num_steps=2, scheduler=resolve_scheduler("unipc", TINY_WORLD_ASSET))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
