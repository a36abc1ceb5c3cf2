"""``jobs/evaluate_generator.py``: ground-truth win rates of a trained generator against another on the
synthetic world's held-out prompts, logged to MLflow with a frame grid."""

from __future__ import annotations

import json
import logging
from typing import Literal

from pydantic import Field

from videoalign_ray.runtime.fileio import write_text_atomic
from videoalign_ray.runtime.job import job_run
from videoalign_ray.sections import RuntimeSection

log = logging.getLogger(__name__)


class EvaluateConfig(RuntimeSection):
    """Config of ``jobs/evaluate_generator.py``."""

    output_dir: str = "outputs/evaluate_generator"
    policy_weights: str | None = Field(None, description="A job's final/ folder (adapter/ or model/); default: the base.")
    reference_weights: str | None = Field(None, description="Another final/ folder; default: the base model itself.")
    model_path: str | None = Field(None, description="Base model folder; default: the tiny-world asset.")
    prompts: Literal["heldout", "train", "all"] = Field("heldout", description="heldout | train | all (synthetic-world prompt sets).")
    split_seed: int = Field(0, description="Seed of the train/held-out prompt split.")
    samples_per_prompt: int = Field(8, ge=1, description="Samples per prompt (shared seeds for both models).")
    sample_steps: int = Field(20, ge=1, description="Euler steps.")
    num_frames: int = 8
    height: int = 32
    width: int = 32


def run_evaluate(cfg: EvaluateConfig) -> dict:
    """Sample, score, print and log the comparison; returns a summary with the table."""
    with job_run(cfg, track=True, start_ray=True) as job:
        return _run(cfg, job)


def _run(cfg: EvaluateConfig, job) -> dict:
    from videoalign_ray.flow.model import PRESETS, resolve_model_dir
    from videoalign_ray.runtime.placement import use_gpu_default
    from videoalign_ray.synthetic.evaluate import Generator, compare_generators_remote, format_table
    from videoalign_ray.synthetic.world import all_scenes, split_scenes

    out = job.out
    model_dir = str(resolve_model_dir("tiny-world", cfg.model_path, out))
    train, held = split_scenes(seed=cfg.split_seed)
    scenes = {"heldout": held, "train": train, "all": all_scenes()}[cfg.prompts]
    result = compare_generators_remote(
        Generator(model_dir, cfg.policy_weights), Generator(model_dir, cfg.reference_weights), scenes,
        use_gpu=use_gpu_default(None),
        samples_per_prompt=cfg.samples_per_prompt, seed=cfg.seed, num_frames=cfg.num_frames, height=cfg.height,
        width=cfg.width, max_text_tokens=PRESETS["tiny-world"].max_text_tokens, steps=cfg.sample_steps,
        grid_path=out / "grid.png",
    )
    table = format_table(result)
    log.info("\n%s", table)
    write_text_atomic(out / "scores.json", json.dumps(result, indent=2))
    tracker = job.tracker
    metrics = {f"win_rate_{d}": v[0] for d, v in result["win_rate"].items()}
    metrics |= {f"policy_{d}": v for d, v in result["policy_mean"].items()}
    metrics |= {f"reference_{d}": v for d, v in result["reference_mean"].items()}
    tracker.log_metrics(metrics, step=0)
    for f in ("grid.png", "scores.json"):
        tracker.log_artifact(out / f)
    return job.complete({"table": "\n" + table, "n": result["n"], "grid": str(out / "grid.png")})
