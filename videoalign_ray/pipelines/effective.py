"""The values a job uses where its config says "default from the preset" (``None``): resolved once, at the
start of the job, so that ``config.yaml``, the MLflow params and the run itself agree (``lr: 0.001``, not
``lr: null``)."""

from __future__ import annotations

from typing import Any

GENERATOR_KEYS = ("num_frames", "height", "width", "lr", "lora_rank", "lora_alpha", "gradient_checkpointing")
CLIP_KEYS = ("num_frames", "height", "width")


def generator_defaults(cfg, keys: tuple[str, ...] = GENERATOR_KEYS) -> dict[str, Any]:
    """Preset values for the generator fields of ``cfg`` that are ``None``: ``num_frames``, ``height``,
    ``width`` (:class:`~videoalign_ray.config.ModelSection`) and, where the config has them, ``lr``,
    ``lora_rank``, ``lora_alpha`` (2 x rank) and ``gradient_checkpointing`` (on for real presets)."""
    from videoalign_ray.flow.model import PRESETS

    preset = PRESETS[cfg.preset]
    fields = type(cfg).model_fields
    rank = getattr(cfg, "lora_rank", None) or preset.lora_rank
    fill = {"num_frames": preset.num_frames, "height": preset.height, "width": preset.width, "lr": preset.lr,
            "lora_rank": rank, "lora_alpha": 2.0 * rank, "gradient_checkpointing": not cfg.preset.startswith("tiny")}
    return {k: fill[k] for k in keys if k in fields and getattr(cfg, k) is None}


def with_generator_defaults(cfg, keys: tuple[str, ...] = GENERATOR_KEYS):
    """``cfg`` with :func:`generator_defaults` (of ``keys``) filled in (a copy; ``cfg`` itself is frozen)."""
    return cfg.model_copy(update=generator_defaults(cfg, keys))
