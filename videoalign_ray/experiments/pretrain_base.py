"""Pre-training of the tiny base generator on the synthetic world (issue: a base whose samples show
recognisable moving shapes, so that alignment has something to improve).

It is the Flow-DPO job with ``objective="pretrain"`` (flow matching on every video of every pair) and full
fine-tuning from the random ``tiny`` preset, on a large mixed-quality synthetic dataset over every prompt of the
world (``--world classic``: 32 prompts, the committed ``tiny_world_base``; ``--world large``: 128 prompts,
``tiny_world_large_base``);
the trained transformer is then exported next to the pixel-space VAE as a diffusers-format folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from videoalign_ray.pipelines.flow_dpo import FlowDPOConfig, run_flow_job
from videoalign_ray.runtime.fileio import atomic_dir


class PretrainConfig(FlowDPOConfig):
    """Config of ``jobs/pretrain_base.py``: the Flow-DPO job's keys with pre-training defaults."""

    output_dir: str = "outputs/pretrain_base"
    preset: Literal["tiny"] = "tiny"
    objective: Literal["pretrain"] = "pretrain"
    finetune: Literal["full"] = "full"
    max_steps: int = 3000
    batch_size: int = 8
    lr: float | None = 1e-3
    warmup_steps: int = 100
    checkpoint_every: int = 500
    log_every: int = 10
    num_samples: int = 4
    world: Literal["classic", "large"] = Field("classic", description="The synthetic world's grammar to pre-train on.")
    world_pairs: int = Field(1024, ge=1, description="Synthetic pairs to render for pre-training (2 videos each).")
    export_dir: str | None = Field(None, description="Where to write the base; default <output_dir>/tiny_world_base.")


def export_base(model_dir: Path, weights_dir: Path, export_dir: Path, info: dict) -> Path:
    """Write ``transformer/`` (trained weights, safetensors) + ``vae/`` + ``model_index.json`` atomically."""
    from videoalign_ray.flow.generator import load_policy
    from videoalign_ray.flow.model import load_vae

    export_dir = Path(export_dir)
    with atomic_dir(export_dir) as tmp:
        load_policy(model_dir, weights_dir).save_pretrained(tmp / "transformer", safe_serialization=True)
        load_vae(model_dir).save_pretrained(tmp / "vae")
        (tmp / "model_index.json").write_text(json.dumps({"preset": "tiny-world", **info}, indent=2) + "\n")
    return export_dir


def run_pretrain(cfg: PretrainConfig) -> dict:
    """Render the world data, pre-train, export; returns the flow job's summary plus ``export_dir``."""
    from videoalign_ray.synthetic.world import all_scenes, make_preference_dataset

    out = Path(cfg.output_dir).resolve()
    data = cfg.data or str(make_preference_dataset(
        out / "world_data", num_pairs=cfg.world_pairs, scenes=all_scenes(cfg.world), seed=cfg.seed, name="world"))
    summary = run_flow_job(cfg.model_copy(update={"data": data}))
    export = Path(cfg.export_dir or out / "tiny_world_base").resolve()
    info = {"steps": summary["steps"], "final_loss": summary["final_metrics"].get("loss"),
            "world": cfg.world, "world_pairs": cfg.world_pairs, "seed": cfg.seed,
            "command": "python jobs/pretrain_base.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in cfg.to_flat_dict().items()
                if v is not None and k in ("max_steps", "world", "world_pairs", "seed", "num_workers", "batch_size", "lr"))}
    summary["export_dir"] = str(export_base(out / "base_model", Path(summary["checkpoint"]), export, info))
    return summary
