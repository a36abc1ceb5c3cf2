"""On-disk cache of encoded tensors (video latents, prompt embeddings), one safetensors file per key.

Keys hash everything the tensor depends on: for a video (absolute path, size, mtime, frame count, pixel
size, VAE id); for a prompt (text, text-encoder id, token length). Entries are written atomically, so a
crash leaves either a complete entry or none. On a multi-node cluster ``root`` must be shared storage.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from videoalign_ray.runtime.fileio import atomic_path


def video_key(path: str, num_frames: int, height: int, width: int, vae_id: str) -> str:
    """Cache key of a video's latents; changes when the file, the sampling, the size or the VAE changes."""
    st = os.stat(path)
    raw = f"video\0{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{num_frames}\0{height}x{width}\0{vae_id}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def prompt_key(prompt: str, encoder_id: str, max_tokens: int) -> str:
    """Cache key of a prompt's token embeddings."""
    return hashlib.sha256(f"prompt\0{prompt}\0{encoder_id}\0{max_tokens}".encode()).hexdigest()[:32]


class TensorCache:
    """A folder of ``<key[:2]>/<key>.safetensors`` files, each holding one tensor named ``value``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> torch.Tensor | None:
        p = self.path(key)
        return load_file(p)["value"] if p.is_file() else None

    def put(self, key: str, value: torch.Tensor) -> None:
        with atomic_path(self.path(key)) as tmp:
            save_file({"value": value.contiguous()}, str(tmp))
