"""Latent reward model for Flow-NRG: the generator's first K transformer blocks + pooling + a 3-output head.

docs/algorithms.md section 3 / paper section 4.3: ``r_phi(x_t, t, c) -> (B, 3)`` (VQ, MQ, TA) scores NOISY latents
directly (no VAE decode, no VLM). The trunk is copied from a generator checkpoint (patch embedding, rotary
embedding, timestep/text condition embedder, blocks ``0..K-1``) and trained; the head is new. It is
conditioned on ``t`` through the blocks' timestep modulation and on the prompt through their cross-attention,
exactly as the generator is.

Checkpoints are a folder with ``latent_reward.safetensors`` and ``latent_reward_config.json`` (the generator's
transformer config, K, and where the trunk came from).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from videoalign_ray.errors import ModelPathError
from videoalign_ray.flow.schedule import to_model_timestep

WEIGHTS = "latent_reward.safetensors"
CONFIG = "latent_reward_config.json"


class LatentRewardModel(nn.Module):
    """``forward(latents (B, C, F, h, w), t (B,) in [0, 1], prompt_embeds (B, L, D)) -> (B, 3)`` float32.

    Built from a ``WanTransformer3DModel`` (diffusers) whose first ``num_blocks`` blocks are kept.
    """

    def __init__(self, transformer, num_blocks: int):
        super().__init__()
        if not 1 <= num_blocks <= len(transformer.blocks):
            raise ValueError(f"num_blocks must be in [1, {len(transformer.blocks)}], got {num_blocks}")
        self.generator_config = dict(transformer.config)
        self.num_blocks = num_blocks
        self.patch_size = tuple(transformer.config.patch_size)
        self.rope = transformer.rope
        self.patch_embedding = transformer.patch_embedding
        self.condition_embedder = transformer.condition_embedder
        self.blocks = nn.ModuleList(list(transformer.blocks)[:num_blocks])
        inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        self.norm = nn.LayerNorm(inner)
        self.head = nn.Linear(inner, 3)
        nn.init.zeros_(self.head.bias)
        nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, latents: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        dtype = self.patch_embedding.weight.dtype
        x = latents.to(dtype)
        rotary = self.rope(x)
        h = self.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()
        timestep = to_model_timestep(t.reshape(-1)).to(dtype)
        _, timestep_proj, text, _ = self.condition_embedder(timestep, prompt_embeds.to(dtype), None)
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
        for block in self.blocks:
            h = block(h, text, timestep_proj, rotary)
        return self.head(self.norm(h.float().mean(dim=1)))

    def config_dict(self, source: str = "") -> dict:
        return {"generator_config": {k: v for k, v in self.generator_config.items() if not k.startswith("_")},
                "num_blocks": self.num_blocks, "source": source}


def from_generator(model_dir: str | Path, num_blocks: int) -> LatentRewardModel:
    """A latent reward model whose trunk is copied from the generator in ``model_dir`` (``transformer/``)."""
    from videoalign_ray.flow.model import load_transformer

    return LatentRewardModel(load_transformer(model_dir), num_blocks)


def save_latent_reward(model: LatentRewardModel, out_dir: str | Path, source: str = "") -> Path:
    """Write the checkpoint folder atomically (safetensors + JSON config)."""
    from safetensors.torch import save_file

    from videoalign_ray.runtime.fileio import atomic_dir

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(model.config_dict(source), indent=2))
    return out_dir


def load_latent_reward(path: str | Path) -> LatentRewardModel:
    """Load a checkpoint folder written by :func:`save_latent_reward` (safetensors only).

    Raises:
        FileNotFoundError: the folder lacks the weights or the config.
    """
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / WEIGHTS).is_file() or not (path / CONFIG).is_file():
        raise ModelPathError(f"{path}: not a latent reward checkpoint (needs {WEIGHTS} and {CONFIG})")
    conf = json.loads((path / CONFIG).read_text())
    gen = dict(conf["generator_config"], num_layers=conf["num_blocks"])
    model = LatentRewardModel(WanTransformer3DModel(**gen), conf["num_blocks"])
    model.load_state_dict(load_file(str(path / WEIGHTS)))
    return model.eval()


class LatentRewardEnsemble(nn.Module):
    """The mean of several latent reward models: ``forward(latents (B, C, F, h, w), t (B,), prompt_embeds
    (B, L, D)) -> (B, 3)`` float32 ``= mean_m r_m(x_t, t, c)``.

    Its guidance gradient is the mean of the members' gradients: what members trained with different seeds
    agree on adds up, what they disagree on cancels (docs/online.md: single guides of the same data push VQ in
    opposite directions). Members may differ in K and width; they must accept the same latents and prompts.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one latent reward model")
        self.members = nn.ModuleList(members)

    def forward(self, latents: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(latents, t, prompt_embeds).float() for m in self.members]).mean(dim=0)


def load_latent_reward_spec(spec: str | Path) -> nn.Module:
    """The guide model named by a job's ``--latent-reward``: one checkpoint folder gives its
    :class:`LatentRewardModel`; several folders joined by commas give their :class:`LatentRewardEnsemble`.

    Raises:
        ModelPathError: a folder that is not a latent reward checkpoint (the folder named).
        ValueError: an empty spec.
    """
    paths = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not paths:
        raise ValueError(f"no latent reward checkpoint in {spec!r}")
    if len(paths) == 1:
        return load_latent_reward(paths[0])
    return LatentRewardEnsemble([load_latent_reward(p) for p in paths]).eval()


class LatentRewardGuide:
    """The local Flow-NRG guide: ``grad_{x_t} sum_d weights_d * r_phi(x_t, t, c)[:, d]``.

    ``__call__(latents (B, C, F, h, w), t (B,), prompt_embeds (B, L, D), weights (3,)) -> (B, C, F, h, w)``
    float32, on the latents' device. The model's own parameters get no gradient.
    """

    def __init__(self, model: LatentRewardModel):
        self.model = model.eval().requires_grad_(False)

    def __call__(self, latents: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor,
                 weights: torch.Tensor) -> torch.Tensor:
        return reward_gradient(self.model, latents, t, prompt_embeds, weights)


def reward_gradient(model, latents: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor,
                    weights: torch.Tensor) -> torch.Tensor:
    """``d/dx sum_b sum_d weights_d * model(x, t, c)[b, d]`` at ``x = latents``; shape of ``latents``, float32.

    Each sample's reward depends only on its own latents, so the gradient of the batch sum is the per-sample
    gradient.
    """
    device = next(model.parameters()).device
    w = torch.as_tensor(weights, dtype=torch.float32, device=device).reshape(1, 3)
    with torch.enable_grad():
        x = latents.detach().to(device=device, dtype=torch.float32).requires_grad_(True)
        r = model(x, t.to(device), prompt_embeds.to(device))
        (grad,) = torch.autograd.grad((r.float() * w).sum(), x)
    return grad.to(latents.device)
