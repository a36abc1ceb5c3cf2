"""Text-to-video sampling: the Euler ODE sampler or a diffusers flow-matching scheduler (UniPC, what
``WanPipeline`` uses), optional classifier-free guidance (CFG) and optional Flow-NRG reward guidance.

Which sampler (:func:`resolve_scheduler`): ``auto`` takes the scheduler the model folder ships
(``scheduler/scheduler_config.json``: Wan2.1's is ``UniPCMultistepScheduler`` with flow sigmas and
``flow_shift`` 3.0), and Euler for the tiny presets (no scheduler folder: their tests and experiments were
measured with Euler). Flow-NRG always samples with Euler: its update ``v - w * min(t/(1-t), cap) * grad`` is
the guided velocity of one Euler step (ALGORITHMS.md, Flow-NRG); a multistep solver would carry the gradient
term of past steps into its extrapolation, which the rule does not account for.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from videoalign_ray.flow.guidance import DEFAULT_MAX_FACTOR, nrg_velocity
from videoalign_ray.flow.schedule import euler_sample, euler_timesteps, to_model_timestep

RewardGuide = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``guide(latents (B,C,F,h,w), t (B,), prompt_embeds (B,L,D), weights (3,)) -> reward gradient (B,C,F,h,w)``."""


WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)
"""Wan2.1's own negative prompt (``wan/configs/shared_config.py``, ``sample_neg_prompt``); ``negative_prompt: wan``."""

WAN_UNIPC_DEFAULTS = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "num_train_timesteps": 1000,
                      "flow_shift": 3.0}
"""``UniPCMultistepScheduler`` as diffusers documents Wan's default (docs/source/en/api/pipelines/wan.md; the
Wan2.1-T2V-1.3B-Diffusers folder ships the same, with 3.0 for 480p)."""

Sampler = Literal["auto", "euler", "unipc"]


def prompt_clean(text: str) -> str:
    """A prompt as ``WanPipeline`` feeds it to the tokenizer: ``ftfy.fix_text``, HTML unescaped twice, stripped,
    every whitespace run one space (diffusers ``pipeline_wan.prompt_clean``)."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


def negative_prompt_text(negative_prompt: str) -> str:
    """``wan`` -> :data:`WAN_NEGATIVE_PROMPT`; any other value is the negative prompt itself (default ``""``)."""
    return WAN_NEGATIVE_PROMPT if negative_prompt == "wan" else negative_prompt


def resolve_scheduler(sampler: Sampler, model_dir: str | Path, shift: float | None = None):
    """The diffusers scheduler to sample with, or None for Euler.

    ``euler``: None. ``unipc``: the model folder's ``UniPCMultistepScheduler`` config, else
    :data:`WAN_UNIPC_DEFAULTS`. ``auto``: the folder's scheduler when it has one (a real Wan folder), else None
    (the tiny presets). ``shift`` replaces the scheduler's ``flow_shift`` when given.

    Raises:
        ValueError: an unknown sampler, or a folder scheduler that is not a flow-matching UniPC / Euler one.
    """
    import diffusers

    if sampler not in ("auto", "euler", "unipc"):
        raise ValueError(f"sampler must be auto, euler or unipc, got {sampler!r}")
    if sampler == "euler":
        return None
    path = Path(model_dir) / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text()) if path.is_file() else None
    if config is None or (sampler == "unipc" and config.get("_class_name") != "UniPCMultistepScheduler"):
        if sampler == "auto":
            return None
        config = {"_class_name": "UniPCMultistepScheduler", **WAN_UNIPC_DEFAULTS}
    name = config.get("_class_name")
    if name not in ("UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler"):
        raise ValueError(f"{path}: scheduler {name!r} is not one the sampler supports "
                         "(UniPCMultistepScheduler with flow sigmas, FlowMatchEulerDiscreteScheduler)")
    if name == "UniPCMultistepScheduler" and not config.get("use_flow_sigmas"):
        raise ValueError(f"{path}: UniPCMultistepScheduler without use_flow_sigmas is not a flow-matching sampler")
    if shift is not None:
        config = {**config, ("flow_shift" if name == "UniPCMultistepScheduler" else "shift"): shift}
    return getattr(diffusers, name).from_config(config)


def sampler_name(scheduler) -> str:
    """``euler`` for None, else the scheduler's class name and shift, e.g. ``UniPCMultistepScheduler(shift=3.0)``."""
    if scheduler is None:
        return "euler"
    shift = scheduler.config.get("flow_shift", scheduler.config.get("shift"))
    return f"{type(scheduler).__name__}(shift={shift})"


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample (plain values: crosses processes). ``shift`` None: the scheduler's own, 1.0 with Euler."""

    sampler: Sampler = "auto"
    steps: int = 20
    shift: float | None = None
    cfg_scale: float = 1.0
    negative_prompt: str = ""

    @classmethod
    def of(cls, cfg) -> SamplingSettings:
        """From a config with ``sampler``, ``sample_steps``, ``sample_shift``, ``cfg_scale``, ``negative_prompt``
        (``config.SamplingSection``, or a training loop's config)."""
        return cls(sampler=cfg.sampler, steps=cfg.sample_steps, shift=cfg.sample_shift, cfg_scale=cfg.cfg_scale,
                   negative_prompt=cfg.negative_prompt)

    def scheduler(self, model_dir: str | Path, *, reward_guidance: bool = False):
        """:func:`resolve_scheduler` for ``model_dir``; None (Euler) with Flow-NRG guidance."""
        return None if reward_guidance else resolve_scheduler(self.sampler, model_dir, self.shift)

    def negative_embeds(self, text_encoder, n: int) -> torch.Tensor | None:
        """The negative prompt's embeddings ``(n, L, D)`` when CFG is on (``cfg_scale > 1``), else None."""
        return text_encoder.encode([negative_prompt_text(self.negative_prompt)] * n) if self.cfg_scale > 1 else None

    def kwargs(self, model_dir: str | Path, *, reward_guidance: bool = False) -> dict:
        """``num_steps``, ``shift``, ``guidance_scale`` and ``scheduler`` for :func:`sample_latents`."""
        return {"num_steps": self.steps, "shift": self.shift or 1.0, "guidance_scale": self.cfg_scale,
                "scheduler": self.scheduler(model_dir, reward_guidance=reward_guidance)}


def latent_shape(vae_config, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(C, F, h, w) of the latents of a ``num_frames x height x width`` video for a Wan VAE config."""
    ft = vae_config.scale_factor_temporal
    fs = vae_config.scale_factor_spatial
    return vae_config.z_dim, (num_frames - 1) // ft + 1, height // fs, width // fs


@torch.no_grad()
def sample_latents(
    transformer, prompt_embeds: torch.Tensor, noise: torch.Tensor, *, num_steps: int = 20, shift: float = 1.0,
    guidance_scale: float = 1.0, negative_embeds: torch.Tensor | None = None,
    reward_guide: RewardGuide | None = None, reward_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    reward_scale: float = 0.0, max_guidance_factor: float = DEFAULT_MAX_FACTOR, scheduler=None,
) -> torch.Tensor:
    """Sample latents ``(B, C, F, h, w)`` float32 from ``noise`` of that shape in ``num_steps`` steps.

    ``prompt_embeds``: ``(B, L, D)``. With ``guidance_scale > 1`` and ``negative_embeds`` (same shape),
    CFG: ``v = v_neg + s * (v_pos - v_neg)``. ``scheduler`` None: Euler on the shifted schedule
    (``shift``), the model seeing ``timestep = 1000 t``. A diffusers flow-matching scheduler
    (:func:`resolve_scheduler`; its own shift; ``shift`` unused): the loop of ``WanPipeline.__call__`` (diffusers
    0.35+): its ``timesteps`` go to the model as they are, the latents stay float32, the model input is cast to
    the transformer's dtype, ``scheduler.step`` updates. With ``reward_guide`` and ``reward_scale > 0``, Flow-NRG
    after CFG: ``v <- v - reward_scale * min(t/(1-t), max_guidance_factor) * grad`` (none at ``t = 1``), where
    ``grad`` is the guide's gradient of ``sum_d reward_weights[d] * r_d`` (VQ, MQ, TA); Euler only.

    Raises:
        ValueError: Flow-NRG with a scheduler.
    """
    # diffusers' ``dtype`` skips the modules kept in float32: a bf16 Wan from from_pretrained(torch_dtype=bf16)
    # has a float32 ``scale_shift_table`` as its first parameter, and inputs cast to that fail in its bf16 convs
    param = next(transformer.parameters())
    dtype, device = getattr(transformer, "dtype", param.dtype), param.device
    use_cfg = guidance_scale > 1.0 and negative_embeds is not None
    use_nrg = reward_guide is not None and reward_scale > 0
    if use_nrg and scheduler is not None:
        raise ValueError("Flow-NRG samples with Euler (its guidance rule is an Euler step's); got a scheduler")
    weights = torch.tensor(reward_weights, dtype=torch.float32)
    text = prompt_embeds.to(device, dtype)
    negative = negative_embeds.to(device, dtype) if use_cfg else None

    def model_velocity(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        xi, ti = x.to(device, dtype), timestep.to(device)
        v = transformer(hidden_states=xi, timestep=ti, encoder_hidden_states=text, return_dict=False)[0]
        if use_cfg:
            v_neg = transformer(hidden_states=xi, timestep=ti, encoder_hidden_states=negative, return_dict=False)[0]
            v = v_neg + guidance_scale * (v - v_neg)
        return v

    if scheduler is not None:
        scheduler = type(scheduler).from_config(scheduler.config)  # stateful (its multistep history): a fresh one
        scheduler.set_timesteps(num_steps, device=device)
        scheduler.set_begin_index(0)
        x = noise.float().to(device)
        for t in scheduler.timesteps:
            x = scheduler.step(model_velocity(x, t.expand(x.shape[0])), t, x, return_dict=False)[0]
        return x.float().cpu()

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = model_velocity(x, to_model_timestep(t).to(dtype)).float().to(x.device)
        if use_nrg and bool((t < 1.0).any()):
            grad = reward_guide(x, t, prompt_embeds, weights)
            v = nrg_velocity(v, grad, t, reward_scale, max_guidance_factor)
        return v

    return euler_sample(velocity, noise.float(), euler_timesteps(num_steps, shift))
