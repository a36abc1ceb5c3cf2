"""VideoReward checkpoints: this project's folders, and VideoAlign's released ones through the same call.

Ours (written atomically): ``model.safetensors`` (the whole VideoRewardModel, LoRA merged),
``config.json`` (the Qwen2-VL config), ``reward_config.json`` (output_dim, reward_token, normalisation
mean/std, and the :class:`~videoalign_ray.reward.scheme.ScoringScheme` it was trained with) and the tokenizer.
A released VideoAlign folder (``model_config.json`` + ``checkpoint-N/``) loads through
:mod:`videoalign_ray.reward.videoalign_checkpoint`; :func:`load_reward_checkpoint` takes either.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from videoalign_ray.errors import ModelPathError
from videoalign_ray.reward.model import VideoRewardModel
from videoalign_ray.reward.scheme import ScoringScheme
from videoalign_ray.runtime.fileio import atomic_dir


def is_reward_checkpoint(folder: str | Path) -> bool:
    """Ours (``reward_config.json``) or a released VideoAlign folder (``model_config.json``)."""
    folder = Path(folder)
    return (folder / "reward_config.json").is_file() or (folder / "model_config.json").is_file()


def scheme_of(reward_config: dict) -> ScoringScheme:
    """The scoring scheme of our ``reward_config.json``; checkpoints written before schemes were recorded
    used the project scheme with their own ``fps`` and pixel budget."""
    if "scheme" in reward_config:
        return ScoringScheme.from_dict(reward_config["scheme"])
    return ScoringScheme(fps=reward_config.get("fps", 2.0), min_pixels=reward_config.get("min_pixels", 128 * 28 * 28),
                         max_pixels=reward_config.get("max_pixels", 448 * 448))


def save_reward_checkpoint(model: VideoRewardModel, tokenizer, folder: str | Path, extra: dict | None = None,
                           scheme: ScoringScheme | None = None) -> Path:
    """Write our HF-style checkpoint folder atomically (temp folder + rename), recording ``scheme`` (default: the
    project scheme at the ``fps`` / ``min_pixels`` / ``max_pixels`` of ``extra``, see :func:`scheme_of`)."""
    scheme = scheme or scheme_of(extra or {})
    with atomic_dir(folder) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(model.backbone.config.to_json_string())
        (tmp / "reward_config.json").write_text(json.dumps({
            "output_dim": model.output_dim, "reward_token": model.reward_token,
            "norm_mean": model.norm_mean.tolist(), "norm_std": model.norm_std.tolist(), **(extra or {}),
            "scheme": scheme.to_dict()}, indent=2))
        tokenizer.save_pretrained(tmp / "tokenizer")
    return Path(folder)


def place_for_scoring(model: VideoRewardModel, scheme: ScoringScheme, device: str = "cpu") -> VideoRewardModel:
    """``model`` on ``device`` in the scheme's dtype where the device supports it (bf16 on a CUDA GPU with bf16,
    as VideoAlign's inference runs the released model; float32 otherwise, CPU included)."""
    import torch

    dtype = torch.float32
    if scheme.dtype == "bfloat16" and str(device).startswith("cuda") and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    return model.to(device=device, dtype=dtype)


def load_reward_checkpoint(folder: str | Path):
    """Load our checkpoint folder or a released VideoAlign folder: returns ``(VideoRewardModel in eval mode,
    float32 on CPU, VideoRewardProcessor carrying the checkpoint's scoring scheme)``.

    Raises:
        ModelPathError: neither kind of checkpoint (or a released one that does not load, see
            :func:`~videoalign_ray.reward.videoalign_checkpoint.load_videoalign_checkpoint`).
    """
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from videoalign_ray.reward.processor import VideoRewardProcessor, load_tokenizer
    from videoalign_ray.reward.videoalign_checkpoint import is_videoalign_folder, load_videoalign_checkpoint

    folder = Path(folder)
    if is_videoalign_folder(folder):
        model, proc, _ = load_videoalign_checkpoint(folder)
        return model, proc
    if not (folder / "reward_config.json").is_file():
        raise ModelPathError(f"{folder}: not a VideoReward checkpoint (no reward_config.json or model_config.json)")
    rc = json.loads((folder / "reward_config.json").read_text())
    scheme = scheme_of(rc)
    tok = load_tokenizer(folder / "tokenizer")
    backbone = Qwen2VLForConditionalGeneration(Qwen2VLConfig.from_json_file(folder / "config.json"))
    proc = VideoRewardProcessor(tok, scheme)
    model = VideoRewardModel(backbone, proc.reward_token_ids, output_dim=rc["output_dim"],
                             reward_token=rc["reward_token"], positions=scheme.positions)
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.eval(), proc
