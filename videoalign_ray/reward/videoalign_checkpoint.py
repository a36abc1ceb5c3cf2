"""VideoAlign's released VideoReward folders, loaded as VideoAlign's inference loads them.

A released folder (Hugging Face ``KwaiVGI/VideoReward``) holds ``model_config.json`` (``data_config``,
``model_config``, ``peft_lora_config``, optional ``inference_config``), ``checkpoint-N/`` folders and a
``tokenizer/``. VideoAlign's trainer writes ``checkpoint-N`` in one of three layouts, all read here
(``.pth`` through ``torch.load(weights_only=True)``, never arbitrary unpickling):

- ``model.pth`` of the PEFT-wrapped model (``save_full_model``): keys ``base_model.model.<name>``, LoRA-wrapped
  linears as ``<name>.base_layer.weight`` + ``<name>.lora_A.default.weight`` + ``<name>.lora_B.default.weight``;
- ``adapter_model.safetensors`` (peft's adapter, keys without the adapter name) + ``non_lora_state_dict.pth``
  (the other trainable weights: vision tower, merger, embeddings, reward head); the frozen base weights come
  from ``model_config.model_name_or_path`` (a folder or a Hub id in the local cache);
- ``model.pth`` of a plain (full fine-tune) model.

LoRA weights are injected and merged by peft (``LoraModel`` + ``merge_and_unload``: the scale ``alpha / r``, or
``alpha / sqrt(r)`` with ``use_rslora``, as training used). Names are transformers 4.45's (``model.layers``,
``visual``, ``lm_head``), mapped onto the installed transformers' (``model.language_model``, ``model.visual``).
The checkpoint step is chosen as VideoAlign's ``utils.load_model_from_checkpoint`` chooses it (the latest
``checkpoint-N``, or the one asked for, else the latest), and ``model_config.json`` becomes the model's
:class:`~videoalign_ray.reward.scheme.ScoringScheme` (template, 1-D positions, frame rule, resize, bf16).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from videoalign_ray.data.schema import DIMENSIONS
from videoalign_ray.errors import ModelPathError
from videoalign_ray.flow.lora_merge import load_over, merge_peft_state
from videoalign_ray.reward.scheme import ScoringScheme

log = logging.getLogger(__name__)

CONFIG_FILE = "model_config.json"
DIMS = DIMENSIONS


def is_videoalign_folder(path: str | Path) -> bool:
    """A released VideoAlign folder: it holds ``model_config.json``."""
    return (Path(path) / CONFIG_FILE).is_file()


def choose_checkpoint(folder: Path, step: int | None = -1) -> Path:
    """``checkpoint-N`` as VideoAlign picks it: the highest N for ``step`` None or -1; ``checkpoint-<step>`` when
    present, else the highest N (logged).

    Raises:
        ModelPathError: no ``checkpoint-N`` folder.
    """
    found = sorted((p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    if not found:
        raise ModelPathError(f"{folder}: no checkpoint-N folder beside {CONFIG_FILE}")
    if step is None or step == -1:
        return found[0]
    wanted = folder / f"checkpoint-{step}"
    if wanted in found:
        return wanted
    log.warning("%s: no checkpoint-%d, using the latest, %s (as VideoAlign does)", folder, step, found[0].name)
    return found[0]


def to_current_name(key: str) -> str:
    """A transformers-4.45 Qwen2-VL name (``model.layers...``, ``visual...``, ``lm_head``) under the reward model
    -> the installed transformers' name under :class:`~videoalign_ray.reward.model.VideoRewardModel`
    (``backbone.model.language_model...``, ``backbone.model.visual...``, ``backbone.lm_head``); ``rm_head`` stays."""
    if key.startswith("rm_head."):
        return key
    for old, new in (("model.visual.", "backbone.model.visual."), ("visual.", "backbone.model.visual."),
                     ("model.language_model.", "backbone.model.language_model."),
                     ("model.", "backbone.model.language_model."), ("lm_head.", "backbone.lm_head.")):
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _peft_to_current(key: str) -> str:
    return to_current_name(re.sub(r"^base_model\.model\.", "", key))


def _lora_settings(peft_conf: dict, adapter_dir: Path | None) -> dict:
    """Rank, alpha, rsLoRA and DoRA of the checkpoint: its ``adapter_config.json`` when it has one, else
    ``peft_lora_config`` of model_config.json (VideoAlign ``utils.PEFTLoraConfig`` defaults: r 16, alpha 32)."""
    if adapter_dir is not None and (adapter_dir / "adapter_config.json").is_file():
        saved = json.loads((adapter_dir / "adapter_config.json").read_text())
        return {"rank": int(saved["r"]), "alpha": float(saved["lora_alpha"]),
                "use_rslora": bool(saved.get("use_rslora", False)), "use_dora": bool(saved.get("use_dora", False))}
    return {"rank": int(peft_conf.get("lora_r", 16)), "alpha": float(peft_conf.get("lora_alpha", 32)),
            "use_rslora": bool(peft_conf.get("use_rslora", False)), "use_dora": bool(peft_conf.get("use_dora", False))}


def _load_pth(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _into(what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with its ValueError (weights that do not fit) reported as a ModelPathError."""
    try:
        return fn(*args, **kwargs)
    except ValueError as exc:
        raise ModelPathError(f"{what}: {exc}") from None


def load_videoalign_checkpoint(folder: str | Path, step: int | None = -1, base: str | None = None):
    """Load a released VideoAlign folder: returns ``(VideoRewardModel in eval mode, float32, CPU,
    VideoRewardProcessor with the folder's scheme, info {"checkpoint", "layout", "normalization"})``.

    ``base``: the Qwen2-VL model the checkpoint was trained from (default ``model_config.model_name_or_path``, a
    folder or a Hub id in the local cache); its config always, its weights for the adapter layout.

    Raises:
        ModelPathError: no checkpoint, an unknown layout, weights that do not fit, or a missing base.
    """
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from videoalign_ray.reward.model import VideoRewardModel
    from videoalign_ray.reward.processor import VideoRewardProcessor, load_tokenizer
    from videoalign_ray.runtime.hub import resolve_model_location

    folder = Path(folder)
    conf = json.loads((folder / CONFIG_FILE).read_text())
    model_conf, peft_conf = conf.get("model_config", {}), conf.get("peft_lora_config", {})
    scheme = ScoringScheme.from_videoalign(conf)
    ckpt = choose_checkpoint(folder, step)
    base_loc = base or model_conf.get("model_name_or_path")
    if not base_loc:
        raise ModelPathError(f"{folder / CONFIG_FILE}: no model_config.model_name_or_path (the Qwen2-VL base)")
    base_dir = resolve_model_location(base_loc, "VideoReward base model")
    tok_dir = next((d for d in (folder / "tokenizer", ckpt / "tokenizer", base_dir) if (d / "tokenizer_config.json")
                    .is_file()), None)
    if tok_dir is None:
        raise ModelPathError(f"{folder}: no tokenizer/ (nor one in {ckpt.name}/ or the base {base_dir})")
    tok = load_tokenizer(tok_dir)
    tok.padding_side = "right"  # VideoAlign's processor: padding_side="right"
    special = bool(model_conf.get("use_special_tokens", False))
    reward_token = "special" if special else model_conf.get("reward_token", "last")
    if reward_token not in ("special", "last"):
        raise ModelPathError(f"{folder}: reward_token {reward_token!r} is not supported (special or last)")

    full_pth, adapter = ckpt / "model.pth", ckpt / "adapter_model.safetensors"
    has_base_weights = any(base_dir.glob("*.safetensors"))
    if full_pth.is_file():
        raw = _load_pth(full_pth)
        peft_layout = any(k.startswith("base_model.model.") for k in raw)
    elif adapter.is_file():
        raw, peft_layout = None, True
    else:
        raise ModelPathError(f"{ckpt}: neither model.pth nor adapter_model.safetensors")
    if raw is None and not has_base_weights:
        raise ModelPathError(f"{ckpt}: the adapter layout needs the base weights, and {base_dir} has none")
    backbone = (Qwen2VLForConditionalGeneration.from_pretrained(base_dir, torch_dtype=torch.float32)
                if has_base_weights else Qwen2VLForConditionalGeneration(Qwen2VLConfig.from_pretrained(base_dir)))
    if special:  # VideoAlign: add the reward tokens, then resize_token_embeddings(len(tokenizer))
        backbone.resize_token_embeddings(len(tok), mean_resizing=False)  # rows are loaded below
    proc = VideoRewardProcessor(tok, scheme)
    ids = proc.reward_token_ids if special else [0, 0, 0]
    model = VideoRewardModel(backbone, ids, output_dim=int(model_conf.get("output_dim", 1)), reward_token=reward_token,
                             positions=scheme.positions)
    what = str(ckpt)
    if raw is not None and not peft_layout:  # full fine-tune
        _into(what, load_over, model, {to_current_name(k): v for k, v in raw.items()})
        layout = "full model.pth"
    elif raw is not None:  # PEFT-wrapped model.pth
        state = {_peft_to_current(k): v for k, v in raw.items()}
        model = _into(what, merge_peft_state, model, state, **_lora_settings(peft_conf, None))
        layout = "peft model.pth"
    else:  # adapter + non-LoRA weights over the base
        from safetensors.torch import load_file

        lora = {_peft_to_current(k): v for k, v in load_file(adapter).items()}
        lora = {re.sub(r"\.(lora_A|lora_B)\.", r".\1.default.", k): v for k, v in lora.items()}
        non_lora_file = ckpt / "non_lora_state_dict.pth"
        non_lora = {_peft_to_current(k): v for k, v in _load_pth(non_lora_file).items()} if non_lora_file.is_file() \
            else {}
        # wrapped linears' own weights live under base_layer once peft injects them
        targets = {re.sub(r"\.lora_A\.default\.weight$", "", k) for k in lora if ".lora_A." in k}
        non_lora = {(k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
                     if k.rsplit(".", 1)[0] in targets else k): v for k, v in non_lora.items()}
        model = _into(what, merge_peft_state, model, {**non_lora, **lora}, **_lora_settings(peft_conf, ckpt))
        layout = "adapter + non_lora_state_dict.pth" if non_lora_file.is_file() else "adapter"
    norm = conf.get("inference_config") or {}
    if norm:
        with torch.no_grad():
            model.norm_mean.copy_(torch.tensor([float(norm[f"{d}_mean"]) for d in DIMS]))
            model.norm_std.copy_(torch.tensor([float(norm[f"{d}_std"]) for d in DIMS]))
    return model.float().eval(), proc, {"checkpoint": ckpt.name, "layout": layout, "normalization": bool(norm)}
