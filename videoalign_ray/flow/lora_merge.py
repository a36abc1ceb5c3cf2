"""Fold LoRA adapters into plain weights with peft (no hand-written ``W += a / r * B @ A``): peft applies the
scale it trained with (``alpha / r``, or ``alpha / sqrt(r)`` for rsLoRA) and DoRA's magnitude, so a merged model
computes what base + adapter computes. Used for the Flow-DPO reference of ``--reference previous``, the
VideoReward export and VideoAlign's released checkpoints."""

from __future__ import annotations

import re

import torch

_WRAPPED = re.compile(r"\.(lora_A|lora_B|lora_magnitude_vector|base_layer)(\.default)?(\.weight|\.bias)?$")


def lora_targets(keys) -> list[str]:
    """The module names that ``keys`` (a peft-injected state dict's names) wrap with LoRA."""
    return sorted({_WRAPPED.sub("", k) for k in keys if ".lora_A." in k or ".base_layer." in k})


def merge_peft_state(model: torch.nn.Module, state: dict[str, torch.Tensor], *, rank: int, alpha: float,
                     use_rslora: bool = False, use_dora: bool = False) -> torch.nn.Module:
    """Inject peft LoRA layers (adapter ``default``) into exactly the modules ``state`` wraps, load ``state``
    over the model's own weights, merge (``LoraModel.merge_and_unload``) and return the plain model.

    ``state`` uses the injected names (``<module>.base_layer.weight``, ``<module>.lora_A.default.weight``
    ``(r, in)``, ``<module>.lora_B.default.weight`` ``(out, r)``; other keys as the model names them); base weights
    it leaves out keep the model's values.

    Raises:
        ValueError: no LoRA key, a module the model lacks, a key the injected model lacks, or a shape that does
            not fit.
    """
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    targets = lora_targets(state)
    if not targets:
        raise ValueError("no LoRA weights (lora_A / base_layer keys) to merge")
    names = {n for n, _ in model.named_modules()}
    absent = [t for t in targets if t not in names]
    if absent:
        raise ValueError(f"adapter module {absent[0]!r} is not in the model ({len(absent)} such)")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, use_rslora=use_rslora, use_dora=use_dora,
                        target_modules="^(" + "|".join(re.escape(t) for t in targets) + ")$", bias="none")
    wrapped = LoraModel(model, config, "default")
    load_over(model, state)
    return wrapped.merge_and_unload()


def load_over(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` over ``model``'s own weights (keys it leaves out keep their values), in the model's dtypes.

    Raises:
        ValueError: a key the model lacks, or a shape that does not fit.
    """
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ValueError(f"weights the model lacks, e.g. {unknown[:3]}")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ValueError(f"{k} has shape {tuple(v.shape)}, the model {tuple(own[k].shape)}")
    model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in state.items()}})
