"""The latent / embedding cache at real scale: latents stored in the training dtype, prompt embeddings at their
true token length with WanPipeline's zero padding restored on load, and old entries still readable."""

from __future__ import annotations

import torch

from videoalign_ray.data.cache import TensorCache, put_unpadded


def _wan_pipeline_pad(u: torch.Tensor, max_len: int) -> torch.Tensor:
    """diffusers ``WanPipeline._get_t5_prompt_embeds``: the first ``seq_len`` rows, then zeros to ``max_len``."""
    return torch.cat([u, u.new_zeros(max_len - u.size(0), u.size(1))])


def test_prompt_embeddings_are_stored_unpadded_and_padded_back_as_wanpipeline(tmp_path):
    cache = TensorCache(tmp_path)
    tokens = torch.randn(37, 64)  # a 37-token prompt's hidden states
    padded = _wan_pipeline_pad(tokens, 512)
    put_unpadded(cache, "p" * 32, padded)
    cache.put("q" * 32, padded)  # the old, padded form
    assert torch.equal(cache.get("p" * 32), padded)
    assert torch.equal(cache.get("q" * 32), padded)  # old entries read as before
    small, big = cache.path("p" * 32).stat().st_size, cache.path("q" * 32).stat().st_size
    assert small < big * 40 / 512  # ~37/512 of the padded bytes


def test_bf16_latents_take_half_the_bytes_and_load_as_float32(tmp_path):
    cache = TensorCache(tmp_path)
    latents = torch.randn(16, 5, 12, 20)
    cache.put("a" * 32, latents)
    cache.put("b" * 32, latents.bfloat16())
    got = cache.get("b" * 32)
    assert got.dtype == torch.float32 and torch.equal(got, latents.bfloat16().float())
    assert cache.path("b" * 32).stat().st_size < 0.52 * cache.path("a" * 32).stat().st_size


def test_the_storage_dtype_and_frame_rule_enter_the_latent_keys(tmp_path):
    from dataclasses import replace

    from videoalign_ray.data.sampling import ClipRule
    from videoalign_ray.flow.pipeline import EncodeSpec

    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    spec = EncodeSpec(model_dir="m", cache_dir=str(tmp_path), num_frames=81, height=480, width=832,
                      max_text_tokens=512, vae_id="vae", text_encoder_id="umt5",
                      clip_rule=ClipRule(fps=16, num_frames=81))
    keys = {spec.video_key(str(video)), replace(spec, latent_dtype="bfloat16").video_key(str(video)),
            replace(spec, clip_rule=None).video_key(str(video)),
            replace(spec, clip_rule=ClipRule(fps=16, num_frames=81, start="start")).video_key(str(video))}
    assert len(keys) == 4  # old caches are never mixed with new entries
