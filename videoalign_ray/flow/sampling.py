"""Text-to-video sampling with the Euler ODE sampler, optional classifier-free guidance (CFG) and optional
Flow-NRG reward guidance (applied after CFG)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from videoalign_ray.flow.guidance import DEFAULT_MAX_FACTOR, nrg_velocity
from videoalign_ray.flow.schedule import euler_sample, euler_timesteps, to_model_timestep

RewardGuide = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``guide(latents (B,C,F,h,w), t (B,), prompt_embeds (B,L,D), weights (3,)) -> reward gradient (B,C,F,h,w)``."""


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
    reward_scale: float = 0.0, max_guidance_factor: float = DEFAULT_MAX_FACTOR,
) -> torch.Tensor:
    """Sample latents ``(B, C, F, h, w)`` from ``noise`` of that shape with ``num_steps`` Euler steps.

    ``prompt_embeds``: ``(B, L, D)``. With ``guidance_scale > 1`` and ``negative_embeds`` (same shape),
    CFG: ``v = v_neg + s * (v_pos - v_neg)``. With ``reward_guide`` and ``reward_scale > 0``, Flow-NRG after
    CFG: ``v <- v - reward_scale * min(t/(1-t), max_guidance_factor) * grad`` (none at ``t = 1``), where
    ``grad`` is the guide's gradient of ``sum_d reward_weights[d] * r_d`` (VQ, MQ, TA).
    """
    param = next(transformer.parameters())
    dtype, device = param.dtype, param.device
    use_cfg = guidance_scale > 1.0 and negative_embeds is not None
    use_nrg = reward_guide is not None and reward_scale > 0
    weights = torch.tensor(reward_weights, dtype=torch.float32)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        xi, ti = x.to(device, dtype), to_model_timestep(t).to(device, dtype)
        v = transformer(hidden_states=xi, timestep=ti, encoder_hidden_states=prompt_embeds.to(device, dtype),
                        return_dict=False)[0].float()
        if use_cfg:
            v_neg = transformer(hidden_states=xi, timestep=ti, encoder_hidden_states=negative_embeds.to(device, dtype),
                                return_dict=False)[0].float()
            v = v_neg + guidance_scale * (v - v_neg)
        v = v.to(x.device)
        if use_nrg and bool((t < 1.0).any()):
            grad = reward_guide(x, t, prompt_embeds, weights)
            v = nrg_velocity(v, grad, t, reward_scale, max_guidance_factor)
        return v

    return euler_sample(velocity, noise.float(), euler_timesteps(num_steps, shift))
