"""The published Flow-DPO adapter opens in diffusers and peft and gives our policy's velocity and samples."""

from __future__ import annotations

import functools

import pytest
import torch

from videoalign_ray.flow.generator import load_policy
from videoalign_ray.flow.lora_export import DIFFUSERS_LORA_FILE, write_published_lora
from videoalign_ray.flow.model import (
    PRESETS,
    TextEncoder,
    add_lora,
    decode_latents,
    load_transformer,
    load_vae,
    materialize_tiny_base,
)
from videoalign_ray.flow.schedule import euler_timesteps
from videoalign_ray.pipelines.generate import sample_batch

RANK, ALPHA = 4, 8.0  # alpha != rank: a loader that ignores the stored alpha gives another velocity


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The tiny base and a ``final/`` folder published from an adapter with non-zero (trained-like) weights."""
    from peft.utils import get_peft_model_state_dict

    tmp = tmp_path_factory.mktemp("lora")
    base = materialize_tiny_base(tmp / "base", seed=0)
    model = load_transformer(base)
    add_lora(model, RANK, ALPHA, seed=1)
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    final = tmp / "final"
    final.mkdir()
    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    write_published_lora(state, RANK, ALPHA, final, base_model=str(base))
    return base, final


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 8, 32, 32, generator=g)
    text = torch.randn(2, 16, 384, generator=g)
    t = torch.tensor([700.0, 250.0])
    return x, t, text


def _velocity(model, x, t, text):
    with torch.no_grad():
        return model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]


def _pipeline(base, final):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
                       transformer=load_transformer(base))
    pipe.load_lora_weights(final)  # what a user does: WanPipeline.from_pretrained(base); load_lora_weights(final)
    return pipe


def test_diffusers_and_peft_loaders_give_our_policy_velocity(published):
    from diffusers import WanTransformer3DModel
    from peft import PeftModel

    base, final = published
    assert (final / DIFFUSERS_LORA_FILE).is_file()
    x, t, text = _inputs()
    ours = _velocity(load_policy(base, final), x, t, text)
    reference = _velocity(load_transformer(base).eval(), x, t, text)
    assert (ours - reference).abs().max() > 1e-3, "the adapter must change the velocity for this test to mean anything"

    via_pipeline = _velocity(_pipeline(base, final).transformer.eval(), x, t, text)
    transformer = WanTransformer3DModel.from_pretrained(base / "transformer")
    transformer.load_lora_adapter(final, weight_name=DIFFUSERS_LORA_FILE, prefix="transformer")
    via_transformer = _velocity(transformer.eval(), x, t, text)
    via_peft = _velocity(PeftModel.from_pretrained(load_transformer(base), final / "adapter").eval(), x, t, text)
    for name, v in {"WanPipeline.load_lora_weights": via_pipeline, "load_lora_adapter": via_transformer,
                    "PeftModel.from_pretrained": via_peft}.items():
        assert torch.allclose(v, ours, atol=1e-5), f"{name}: max diff {(v - ours).abs().max():.2e}"


def test_generate_output_equals_the_diffusers_pipeline(published):
    """jobs/generate.py's sampler with the published adapter == WanPipeline (diffusers' Euler scheduler, given
    our sigmas) with the same adapter loaded by diffusers, from the same noise and prompt embeddings."""
    from videoalign_ray.flow.sampling import latent_shape

    base, final = published
    preset, steps, seeds = PRESETS["tiny"], 6, [11, 12]
    prompts = ["a red circle moving left", "a blue square"]
    vae, text = load_vae(base), TextEncoder(base, preset.max_text_tokens)
    ours = sample_batch(load_policy(base, final), text, vae, prompts, seeds, num_frames=preset.num_frames,
                        height=preset.height, width=preset.width, steps=steps, shift=1.0)

    pipe = _pipeline(base, final)
    sigmas = euler_timesteps(steps, 1.0)[:-1].tolist()  # diffusers appends the terminal 0 itself
    pipe.scheduler.set_timesteps = functools.partial(pipe.scheduler.set_timesteps, sigmas=sigmas)
    shape = latent_shape(vae.config, preset.num_frames, preset.height, preset.width)
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    latents = pipe(prompt_embeds=text.encode(prompts), latents=noise, num_inference_steps=steps, guidance_scale=1.0,
                   height=preset.height, width=preset.width, num_frames=preset.num_frames,
                   output_type="latent").frames
    theirs = decode_latents(vae, latents)
    assert ours.shape == theirs.shape == (2, preset.num_frames, preset.height, preset.width, 3)
    diff = ours.astype(int) - theirs.astype(int)
    assert abs(diff).max() <= 1, f"max pixel difference {abs(diff).max()}"  # float rounding at the uint8 boundary
    assert (diff == 0).mean() > 0.99
    unaligned = sample_batch(load_transformer(base).eval(), text, vae, prompts, seeds, num_frames=preset.num_frames,
                             height=preset.height, width=preset.width, steps=steps, shift=1.0)
    assert abs(ours.astype(int) - unaligned.astype(int)).mean() > 1.0, "the adapter must change the samples"


def test_merge_lora_folds_the_adapter_into_the_base_weights(published):
    """merge_lora(base, adapter) computes what peft's base + adapter computes (the reference of --reference
    previous), and each weight moves by (alpha / rank) * B @ A written out here."""
    from videoalign_ray.flow.lora_export import read_adapter_state
    from videoalign_ray.flow.model import merge_lora

    base, final = published
    state, rank, alpha = read_adapter_state(final / "adapter")
    assert (rank, alpha) == (RANK, ALPHA)
    merged = load_transformer(base).eval()
    before = {n: p.detach().clone() for n, p in merged.named_parameters()}
    assert merge_lora(merged, state, rank, alpha) == len(state) // 2
    key = next(k for k in sorted(state) if k.endswith(".lora_A.weight"))
    module = key.removesuffix(".lora_A.weight")
    a, b = state[key], state[f"{module}.lora_B.weight"]
    expected = before[f"{module}.weight"] + (ALPHA / RANK) * torch.einsum("or,ri->oi", b, a)
    assert torch.allclose(merged.get_submodule(module).weight, expected, atol=1e-6)
    assert not any(".lora_" in n for n, _ in merged.named_parameters())  # plain weights, no adapter layers

    x, t, text = _inputs()
    via_peft = _velocity(load_policy(base, final), x, t, text)
    assert (via_peft - _velocity(load_transformer(base).eval(), x, t, text)).abs().max() > 1e-3
    assert torch.allclose(_velocity(merged, x, t, text), via_peft, atol=1e-5)

    with pytest.raises(ValueError, match="without an A/B pair"):
        merge_lora(load_transformer(base), {key: a}, rank, alpha)
    with pytest.raises(ValueError, match="not in the model"):
        merge_lora(load_transformer(base), {"nope.lora_A.weight": a, "nope.lora_B.weight": b}, rank, alpha)


def test_reference_previous_equals_the_initial_policy_so_the_first_loss_is_log2(published):
    """A round with --reference previous: policy initialised from the previous adapter, reference = base with
    it merged. At step 0 they are the same function, so Flow-DPO gives -log sigmoid(0) = log 2 exactly."""
    import math

    from videoalign_ray.flow.train_loop import LoopConfig, _build_model, compute_loss

    base, final = published
    cfg = LoopConfig(
        model_dir=str(base), objective="dpo", finetune="lora", lora_rank=RANK, lora_alpha=ALPHA, lr=1e-3,
        weight_decay=0.0, grad_clip=1.0, objective_args={"beta": 500.0, "beta_schedule": "constant"},  t_sampling="uniform",
        logit_mean=0.0, logit_std=1.0, t_shift=1.0, micro_batch=2, grad_accum=1, zero_stage=0, bf16=False,
        max_steps=1, checkpoint_every=1, log_every=1, seed=0, mlflow_tracking_uri="", mlflow_run_id="",
        fault_marker="", init_adapter=str(final / "adapter"), reference_adapter=str(final / "adapter"))
    policy, reference = _build_model(cfg)
    assert reference is not None and not any(p.requires_grad for p in reference.parameters())
    g = torch.Generator().manual_seed(3)
    batch = {"chosen": torch.randn(2, 3, 8, 32, 32, generator=g), "rejected": torch.randn(2, 3, 8, 32, 32, generator=g),
             "prompt_embeds": torch.randn(2, 16, 384, generator=g)}
    loss, m = compute_loss(policy.eval(), reference, batch, cfg, torch.Generator().manual_seed(0), "cpu", torch.float32)
    # beta = 500 scales float rounding of the two paths (merged weights vs LoRA layers, ~1e-7) to ~1e-5
    assert loss.item() == pytest.approx(math.log(2), abs=1e-4)
    assert abs(m["inside_mean"].item()) < 2e-4
    # against the base as reference the same policy is far from log 2: the reference really changed
    _, m_base = compute_loss(policy, None, batch, cfg, torch.Generator().manual_seed(0), "cpu", torch.float32)
    assert abs(m_base["inside_mean"].item()) > 0.1, m_base["inside_mean"]
