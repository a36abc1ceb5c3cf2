"""The model card (``final/README.md``) of a Flow-DPO / Flow-RWR / SFT run: what the weights are, what they were
trained on and with, how they did, and how to load them (Hugging Face model-card layout: YAML front matter,
then Markdown)."""

from __future__ import annotations

import json
from typing import Any

import yaml

CARD_KEYS = ("objective", "dimension", "beta", "beta_schedule", "rwr_tau", "rwr_normalize", "reward_weights",
             "finetune", "lora_rank", "lora_alpha", "lr", "lr_schedule", "warmup_steps", "max_steps", "batch_size",
             "global_batch", "num_workers", "zero_stage", "precision", "t_sampling", "t_shift", "num_frames",
             "height", "width", "seed")


def base_model_name(preset: str, model_path: str | None) -> str:
    """The base model as the user named it: ``--model-path`` as given (a Hub id or their path), else the preset
    (never this machine's resolved absolute path of a built-in asset)."""
    return model_path or f"videoalign-ray preset {preset}"


def model_card_text(config: dict[str, Any], base_model: str, data: str, pairs: int, steps: int,
                    metrics: dict[str, float], lora: bool) -> str:
    """Markdown model card for ``final/``: ``config`` is the run's effective flat config, ``data`` the table it
    trained on (or a description of the built-in data), ``metrics`` the last logged training metrics."""
    from videoalign_ray.flow.objectives.registry import get_objective, objective_names

    name = config.get("objective", "?")
    objective = get_objective(name).title if name in objective_names() else name
    front = {"base_model": base_model, "library_name": "diffusers" if lora else "videoalign-ray",
             "pipeline_tag": "text-to-video",
             "tags": ["videoalign-ray", "text-to-video", "lora" if lora else "full-fine-tune",
                      str(config.get("objective", ""))]}
    settings = "\n".join(f"| `{k}` | `{json.dumps(config[k])}` |" for k in CARD_KEYS if k in config)
    shown = {k: v for k, v in metrics.items() if not k.startswith(("time/", "startup/", "step_time"))}
    results = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(shown.items())) or "| (none logged) | |"
    if lora:
        usage = f'''```python
from diffusers import WanPipeline

pipe = WanPipeline.from_pretrained("{base_model}")  # the base model this adapter was trained on
pipe.load_lora_weights("path/to/this/folder")          # pytorch_lora_weights.safetensors
```

`adapter/` is the same adapter as a peft folder: `PeftModel.from_pretrained(pipe.transformer, "adapter")`.'''
    else:
        usage = '''`model/` holds the fully fine-tuned transformer in diffusers format:
`WanTransformer3DModel.from_pretrained("path/to/this/folder/model")`, then pass it to `WanPipeline.from_pretrained(base,
transformer=...)`.'''
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# {objective} of {base_model}

Aligned with videoalign-ray ({objective}; VideoAlign, arXiv 2501.13918) on **{pairs}**
preference pairs from `{data}`, **{steps}** optimizer steps.

## Training settings

| key | value |
|---|---|
{settings}

The full configuration is `config.yaml` beside this file (a valid `--config` for the same job).

## Final training metrics (step {steps})

| metric | value |
|---|---|
{results}

## Use

{usage}
"""
