"""Text-to-video sampling with the Euler ODE sampler and optional classifier-free guidance (CFG)."""

from __future__ import annotations

import torch

from videoalign_ray.flow.schedule import euler_sample, euler_timesteps, to_model_timestep


def latent_shape(vae_config, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(C, F, h, w) of the latents of a ``num_frames x height x width`` video for a Wan VAE config."""
    ft = vae_config.scale_factor_temporal
    fs = vae_config.scale_factor_spatial
    return vae_config.z_dim, (num_frames - 1) // ft + 1, height // fs, width // fs


@torch.no_grad()
def sample_latents(
    transformer, prompt_embeds: torch.Tensor, noise: torch.Tensor, *, num_steps: int = 20, shift: float = 1.0,
    guidance_scale: float = 1.0, negative_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample latents ``(B, C, F, h, w)`` from ``noise`` of that shape with ``num_steps`` Euler steps.

    ``prompt_embeds``: ``(B, L, D)``. With ``guidance_scale > 1`` and ``negative_embeds`` (same shape),
    CFG: ``v = v_neg + s * (v_pos - v_neg)``.
    """
    param = next(transformer.parameters())
    dtype, device = param.dtype, param.device
    use_cfg = guidance_scale > 1.0 and negative_embeds is not None

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        xi, ti = x.to(device, dtype), to_model_timestep(t).to(device, dtype)
        v = transformer(hidden_states=xi, timestep=ti, encoder_hidden_states=prompt_embeds.to(device, dtype),
                        return_dict=False)[0].float()
        if use_cfg:
            v_neg = transformer(hidden_states=xi, timestep=ti, encoder_hidden_states=negative_embeds.to(device, dtype),
                                return_dict=False)[0].float()
            v = v_neg + guidance_scale * (v - v_neg)
        return v.to(x.device)

    return euler_sample(velocity, noise.float(), euler_timesteps(num_steps, shift))
