"""A pixel-space "VAE" for the tiny preset: the latents are the pixels, scaled to [-1, 1].

Why: a random-init Wan VAE maps videos to latents that decode to noise, and training a 3-D conv VAE on a
2-core CPU takes longer than the whole alignment proof. At 32x32 pixels the transformer can work on pixels
directly (patch 1x4x4 -> 64 tokens per frame). It has the interface of diffusers' ``AutoencoderKLWan``
that this project uses: ``encode(x).latent_dist.mode()``, ``decode(z).sample`` and a ``config`` with
``z_dim``, ``latents_mean``, ``latents_std``, ``scale_factor_temporal`` and ``scale_factor_spatial``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

CLASS_NAME = "PixelSpaceVAE"


class _Dist:
    def __init__(self, x: torch.Tensor):
        self._x = x

    def mode(self) -> torch.Tensor:
        return self._x

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._x


class PixelSpaceVAE(torch.nn.Module):
    """Identity autoencoder over ``(B, 3, T, H, W)`` pixel videos in [-1, 1]."""

    def __init__(self, z_dim: int = 3):
        super().__init__()
        self.config = SimpleNamespace(
            z_dim=z_dim, latents_mean=[0.0] * z_dim, latents_std=[0.5] * z_dim,
            scale_factor_temporal=1, scale_factor_spatial=1,
        )
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # carries device and dtype

    def encode(self, x: torch.Tensor):
        return SimpleNamespace(latent_dist=_Dist(x))

    def decode(self, z: torch.Tensor):
        return SimpleNamespace(sample=z)

    def save_pretrained(self, folder: str | Path, **_) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"_class_name": CLASS_NAME, "z_dim": self.config.z_dim}))

    @classmethod
    def from_pretrained(cls, folder: str | Path, **_) -> PixelSpaceVAE:
        conf = json.loads((Path(folder) / "config.json").read_text())
        return cls(z_dim=int(conf.get("z_dim", 3)))


def is_pixel_vae(folder: str | Path) -> bool:
    """True when ``folder/config.json`` names this class."""
    f = Path(folder) / "config.json"
    return f.is_file() and json.loads(f.read_text()).get("_class_name") == CLASS_NAME
