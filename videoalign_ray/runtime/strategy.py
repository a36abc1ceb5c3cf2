"""DeepSpeed set-up and checkpointing for the Ray Train workers (the one place that knows DeepSpeed).

CPU: gloo (the process group Ray Train created), ``torch_adam`` (no 40 s fused-Adam JIT build) and no
shared-memory allreduce op (see :func:`skip_cpu_shm_comm_op`), fp32.
GPU: NCCL and bf16. ZeRO stage 0/1/2/3 from config.

A checkpoint folder holds: ``ds/`` (DeepSpeed engine + optimizer, per rank), ``state.json`` (step, data
position, MLflow run id) and, from rank 0, ``adapter/`` (LoRA weights, safetensors) or ``model/`` (full).
The DeepSpeed files are this project's own resume state, loaded only from our own storage; weights
published for others to use are the safetensors ones.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch

DS_TAG = "ds"


def deepspeed_config(
    *, micro_batch: int, grad_accum: int, zero_stage: int, lr: float, weight_decay: float, grad_clip: float,
    bf16: bool, world_size: int, warmup_steps: int = 0, lr_schedule: str = "constant", total_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> dict[str, Any]:
    """The DeepSpeed JSON config for one of our jobs: AdamW; after an optional linear warm-up of
    ``warmup_steps`` the lr stays constant (``lr_schedule="constant"``) or follows a cosine from ``lr`` down to
    ``min_lr_ratio * lr`` at ``total_steps`` (``"cosine"``, DeepSpeed's ``WarmupCosineLR``).

    Raises:
        ValueError: unknown ``lr_schedule``, or ``"cosine"`` without a positive ``total_steps``.
    """
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
    if lr_schedule == "cosine" and total_steps <= 0:
        raise ValueError("lr_schedule='cosine' needs total_steps > 0")
    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage in (1, 2):
        zero.update(overlap_comm=False, contiguous_gradients=True)
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world_size,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": lr, "weight_decay": weight_decay, "betas": [0.9, 0.999], "eps": 1e-8,
                       "torch_adam": True},
        },
        "gradient_clipping": grad_clip if grad_clip > 0 else 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if lr_schedule == "cosine":
        config["scheduler"] = {"type": "WarmupCosineLR", "params": {
            "total_num_steps": total_steps, "warmup_min_ratio": 0.0, "warmup_num_steps": max(1, warmup_steps),
            "cos_min_ratio": min_lr_ratio, "warmup_type": "linear"}}
    elif warmup_steps > 0:
        config["scheduler"] = {"type": "WarmupLR", "params": {
            "warmup_min_lr": 0.0, "warmup_max_lr": lr, "warmup_num_steps": warmup_steps, "warmup_type": "linear"}}
    return config


def skip_cpu_shm_comm_op() -> None:
    """Keep DeepSpeed's CPU backend from JIT-building its shared-memory allreduce op (``deepspeed_shm_comm``).

    DeepSpeed builds that C++ op with torch's extension builder on the first engine of a machine, under
    ``<TORCH_EXTENSIONS_DIR>/deepspeed_shm_comm/lock``. A job killed during the build leaves the lock behind
    and every later job on the machine waits on it forever, with no message (reproduced). Marking the op
    incompatible makes ``deepspeed.comm`` fall back to ``torch.distributed`` (gloo), which our CPU runs use
    anyway; GPU runs never build it (NCCL).
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_engine(model: torch.nn.Module, ds_config: dict[str, Any]):
    """Wrap ``model`` (its trainable parameters) in a DeepSpeed engine on the existing process group."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    import deepspeed

    if not torch.cuda.is_available():
        skip_cpu_shm_comm_op()

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter")
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config)
    return engine


def trainable_state_dict(engine, lora: bool) -> dict[str, torch.Tensor]:
    """Full (gathered) trainable weights on every rank: the LoRA adapter or the whole model, on CPU."""
    import deepspeed

    module = engine.module
    params = [p for p in module.parameters() if p.requires_grad] if lora else list(module.parameters())
    stage3 = engine.zero_optimization_stage() == 3
    ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if stage3 else contextlib.nullcontext()
    with ctx:
        if lora:
            from peft.utils import get_peft_model_state_dict

            sd = get_peft_model_state_dict(module)
        else:
            sd = module.state_dict()
        return {k: v.detach().float().cpu().clone() for k, v in sd.items()}


def save_checkpoint(engine, folder: Path, state: dict[str, Any], *, lora: bool, rank: int, adapter_config: dict) -> None:
    """Write this rank's part of a checkpoint into ``folder`` (all ranks must call it)."""
    from safetensors.torch import save_file

    engine.save_checkpoint(str(folder), tag=DS_TAG, exclude_frozen_parameters=lora)
    weights = trainable_state_dict(engine, lora)
    if rank == 0:
        sub = folder / ("adapter" if lora else "model")
        sub.mkdir(parents=True, exist_ok=True)
        save_file(weights, str(sub / ("adapter_model.safetensors" if lora else "model.safetensors")))
        (sub / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
        (folder / "state.json").write_text(json.dumps(state, indent=2))


def load_checkpoint(engine, folder: Path, *, lora: bool) -> dict[str, Any]:
    """Restore engine + optimizer from ``folder``; return its ``state.json``.

    Raises:
        FileNotFoundError: the folder lacks ``state.json`` or the DeepSpeed files (an incomplete checkpoint).
    """
    state_file = folder / "state.json"
    if not state_file.is_file() or not (folder / DS_TAG).is_dir():
        raise FileNotFoundError(f"incomplete checkpoint {folder}: missing state.json or {DS_TAG}/")
    load_path, _ = engine.load_checkpoint(
        str(folder), tag=DS_TAG, load_module_strict=not lora, load_optimizer_states=True,
        load_lr_scheduler_states=True,
    )
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint under {folder}/{DS_TAG}")
    return json.loads(state_file.read_text())
