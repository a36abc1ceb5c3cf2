"""Publish a trained LoRA adapter in the formats other tools load.

``<final>/pytorch_lora_weights.safetensors`` is what ``WanPipeline.save_lora_weights`` writes (keys
``transformer.<module>.lora_A.weight``, the LoRA config in the safetensors metadata), so a user loads the
aligned generator with ``WanPipeline.from_pretrained(base); pipe.load_lora_weights(final)`` and
ComfyUI-style tools find the file they expect. ``<final>/adapter/`` is a complete peft adapter
(``adapter_config.json`` with ``peft_type``; ``adapter_model.safetensors`` keyed as a ``PeftModel`` saves it),
loadable with ``PeftModel.from_pretrained(transformer, final / "adapter")``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from videoalign_ray.flow.model import lora_config

DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"
PEFT_PREFIX = "base_model.model."


def write_published_lora(state: dict[str, torch.Tensor], rank: int, alpha: float, target: Path,
                         base_model: str | None = None) -> None:
    """Write the adapter ``state`` (peft keys of the injected model: ``blocks.0.attn1.to_q.lora_A.weight``,
    float32 tensors) into ``target`` as ``pytorch_lora_weights.safetensors`` (diffusers) and ``adapter/``
    (peft). ``target`` must exist; write it inside an atomic folder."""
    from diffusers import WanPipeline

    config = lora_config(rank, alpha)
    config.base_model_name_or_path = base_model
    WanPipeline.save_lora_weights(
        target, transformer_lora_layers=state, transformer_lora_adapter_metadata=_jsonable(config.to_dict()),
        safe_serialization=True)
    write_adapter(state, rank, alpha, target, base_model)


def write_adapter(state: dict[str, torch.Tensor], rank: int, alpha: float, target: Path,
                  base_model: str | None = None) -> Path:
    """Write ``state`` (injected-model keys, float32) as peft's ``target/adapter/`` (``adapter_model.safetensors``
    with ``base_model.model.`` keys + ``adapter_config.json``), what :func:`read_adapter_state` and
    ``flow.generator.load_policy`` read; no diffusers import. Returns the ``adapter/`` folder."""
    from safetensors.torch import save_file

    config = lora_config(rank, alpha)
    config.base_model_name_or_path = base_model
    adapter = target / "adapter"
    adapter.mkdir(parents=True, exist_ok=True)
    save_file({PEFT_PREFIX + k: v.contiguous() for k, v in state.items()}, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps(_jsonable(config.to_dict()), indent=2))
    return adapter


def read_adapter_state(adapter_dir: Path) -> tuple[dict[str, torch.Tensor], int, float]:
    """``(state with injected-model keys, rank, alpha)`` of an ``adapter/`` folder, in the published peft
    layout or the training checkpoint's layout (keys without the ``PeftModel`` prefix). Safetensors only."""
    from safetensors.torch import load_file

    conf = json.loads((adapter_dir / "adapter_config.json").read_text())
    raw = load_file(str(adapter_dir / "adapter_model.safetensors"))
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in raw.items()}
    return state, int(conf["r"]), float(conf["lora_alpha"])


def _jsonable(d: dict) -> dict:
    """peft's config dict holds sets (target_modules); JSON needs lists."""
    return json.loads(json.dumps(d, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))
