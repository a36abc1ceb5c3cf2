"""VideoReward checkpoints: our HF-style folders and the published VideoAlign layout.

Ours (written atomically): ``model.safetensors`` (the whole VideoRewardModel, LoRA merged),
``config.json`` (the Qwen2-VL config), ``reward_config.json`` (output_dim, reward_token, normalisation
mean/std) and the tokenizer files.

Published VideoAlign layout: ``model_config.json`` (``model_config``: output_dim, use_special_tokens /
reward_token; ``peft_lora_config``: lora_r, lora_alpha; optional ``inference_config``: VQ_mean ... TA_std)
and ``checkpoint-N/`` holding either ``model.pth`` (full state dict) or ``adapter_model.safetensors`` (LoRA)
+ ``non_lora_state_dict.pth`` (vision tower, new token rows, reward head). ``.pth`` files are read with
``torch.load(weights_only=True)``; LoRA weights are merged (``W += alpha / r * B @ A``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from videoalign_ray.errors import ModelPathError
from videoalign_ray.reward.model import VideoRewardModel
from videoalign_ray.runtime.fileio import atomic_dir

DIMS = ("VQ", "MQ", "TA")


def map_official_key(key: str) -> str:
    """A VideoAlign (transformers 4.x / peft) state-dict key -> this project's VideoRewardModel key."""
    key = re.sub(r"^base_model\.model\.", "", key)
    key = key.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
    if key.startswith("rm_head."):
        return key
    for old, new in (("model.visual.", "backbone.model.visual."), ("visual.", "backbone.model.visual."),
                     ("model.language_model.", "backbone.model.language_model."),
                     ("model.", "backbone.model.language_model."), ("lm_head.", "backbone.lm_head.")):
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _latest_step(folder: Path, step: int) -> Path:
    steps = sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit())
    if not steps:
        raise ModelPathError(f"{folder}: no checkpoint-N folder")
    chosen = steps[-1] if step < 0 else step
    if chosen not in steps:
        raise ModelPathError(f"{folder}: no checkpoint-{chosen} (have {steps})")
    return folder / f"checkpoint-{chosen}"


def _merge_lora(base: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], scale: float) -> int:
    merged = 0
    for key, a in lora.items():
        if ".lora_A." not in key:
            continue
        b = lora[key.replace(".lora_A.", ".lora_B.")]
        target = key.replace(".lora_A.weight", ".weight")
        if target not in base:
            raise KeyError(f"LoRA weight {key} has no base weight {target}")
        base[target] = base[target] + scale * (b.float() @ a.float()).to(base[target].dtype)
        merged += 1
    return merged


def load_official_checkpoint(model: VideoRewardModel, folder: str | Path, step: int = -1) -> dict:
    """Load a published VideoAlign checkpoint into ``model`` (built with the same backbone config and the
    tokenizer holding the reward tokens). Returns ``{"step", "format", "normalization"}``.

    Raises:
        FileNotFoundError: missing ``model_config.json`` or ``checkpoint-N``; KeyError / RuntimeError on
        weights that do not fit the model.
    """
    folder = Path(folder)
    conf = json.loads((folder / "model_config.json").read_text())
    ckpt = _latest_step(folder, step)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if (ckpt / "model.pth").is_file():
        raw = torch.load(ckpt / "model.pth", map_location="cpu", weights_only=True)
        fmt = "model.pth"
        update = {map_official_key(k): v for k, v in raw.items()}
    else:
        non_lora = torch.load(ckpt / "non_lora_state_dict.pth", map_location="cpu", weights_only=True)
        update = {map_official_key(k): v for k, v in non_lora.items()}
        lora = {map_official_key(k): v for k, v in load_file(ckpt / "adapter_model.safetensors").items()}
        peft = conf.get("peft_lora_config", {})
        scale = float(peft.get("lora_alpha", 128)) / float(peft.get("lora_r", 64))
        base = {**state, **update}
        n = _merge_lora(base, lora, scale)
        update = {k: base[k] for k in update} | {k.replace(".lora_A.weight", ".weight"):
                                                base[k.replace(".lora_A.weight", ".weight")]
                                                for k in lora if ".lora_A." in k}
        fmt = f"lora ({n} merged)"
    unknown = [k for k in update if k not in state]
    if unknown:
        raise KeyError(f"{ckpt}: weights the model lacks, e.g. {unknown[:3]}")
    for k, v in update.items():
        if state[k].shape != v.shape:
            raise RuntimeError(f"{ckpt}: {k} has shape {tuple(v.shape)}, model {tuple(state[k].shape)}")
        state[k] = v.to(state[k].dtype)
    norm = conf.get("inference_config") or {}
    if norm:
        state["norm_mean"] = torch.tensor([float(norm[f"{d}_mean"]) for d in DIMS])
        state["norm_std"] = torch.tensor([float(norm[f"{d}_std"]) for d in DIMS])
    model.load_state_dict(state)
    return {"step": int(ckpt.name.split("-")[1]), "format": fmt, "normalization": bool(norm)}


def save_reward_checkpoint(model: VideoRewardModel, tokenizer, folder: str | Path, extra: dict | None = None) -> Path:
    """Write our HF-style checkpoint folder atomically (temp folder + rename)."""
    with atomic_dir(folder) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(model.backbone.config.to_json_string())
        (tmp / "reward_config.json").write_text(json.dumps({
            "output_dim": model.output_dim, "reward_token": model.reward_token,
            "norm_mean": model.norm_mean.tolist(), "norm_std": model.norm_std.tolist(), **(extra or {})}, indent=2))
        tokenizer.save_pretrained(tmp / "tokenizer")
    return Path(folder)


def load_reward_checkpoint(folder: str | Path):
    """Load our checkpoint folder: returns ``(VideoRewardModel in eval mode, VideoRewardProcessor)``."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from videoalign_ray.reward.processor import VideoRewardProcessor, load_tokenizer

    folder = Path(folder)
    rc = json.loads((folder / "reward_config.json").read_text())
    tok = load_tokenizer(folder / "tokenizer")
    backbone = Qwen2VLForConditionalGeneration(Qwen2VLConfig.from_json_file(folder / "config.json"))
    proc = VideoRewardProcessor(tok)
    model = VideoRewardModel(backbone, proc.reward_token_ids, output_dim=rc["output_dim"],
                             reward_token=rc["reward_token"])
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.eval(), proc
