"""``jobs/nrg_synthetic.py``: train a noisy and a clean latent reward model, then sweep Flow-NRG weights.

Both latent reward models see the same synthetic pairs and steps (only ``noise`` differs); each guides the
``tiny-world`` base on the held-out prompts at weight levels 0 / 0.5 / 1 per dimension with the same seeds.
Prints the sweep table (ground-truth means per level, win rate against unguided) for both guides: the
paper's noisy-vs-clean ablation in miniature.
"""

from __future__ import annotations

import json
import logging

from pydantic import Field

from videoalign_ray.runtime.fileio import write_text_atomic
from videoalign_ray.runtime.job import job_run
from videoalign_ray.sections import RuntimeSection

log = logging.getLogger(__name__)


class NRGProofConfig(RuntimeSection):
    """Config of ``jobs/nrg_synthetic.py``."""

    output_dir: str = "outputs/nrg_synthetic"
    guides: str = Field("noisy,clean", description="Latent reward models to train and compare.")
    train_pairs: int = Field(512, ge=2)
    max_steps: int = Field(600, ge=1, description="Latent reward training steps (each guide).")
    num_blocks: int = Field(2, ge=1)
    num_workers: int = Field(2, ge=1)
    guidance_scale: float = Field(2.0, gt=0, description="Flow-NRG w for the top weight level.")
    levels: str = Field("0,0.5,1", description="Weight levels of the swept dimension.")
    samples_per_prompt: int = Field(8, ge=1)
    sample_steps: int = Field(20, ge=1)


def run_nrg_proof(cfg: NRGProofConfig) -> dict:
    with job_run(cfg, track=False, start_ray=True) as job:
        return _run(cfg, job)


def _run(cfg: NRGProofConfig, job) -> dict:
    import ray

    from videoalign_ray.config import validate_config
    from videoalign_ray.experiments.nrg_eval import sweep_table
    from videoalign_ray.flow.model import PRESETS
    from videoalign_ray.pipelines.train_latent_reward import LatentRewardConfig, run_latent_reward
    from videoalign_ray.runtime.placement import run_model_task, use_gpu_default
    from videoalign_ray.synthetic.world import split_scenes

    out = job.out
    preset = PRESETS["tiny-world"]
    _, held = split_scenes(seed=cfg.seed)
    levels = tuple(float(x) for x in cfg.levels.split(","))
    results, training = {}, {}
    for noise in [g.strip() for g in cfg.guides.split(",") if g.strip()]:
        summary = run_latent_reward(validate_config(LatentRewardConfig, dict(
            output_dir=str(out / f"latent_{noise}"), noise=noise, train_pairs=cfg.train_pairs,
            max_steps=cfg.max_steps, num_blocks=cfg.num_blocks, num_workers=cfg.num_workers, seed=cfg.seed,
            cache_dir=str(out / "cache"), mlflow_tracking_uri=cfg.mlflow_tracking_uri,
        )))
        training[noise] = summary["val_accuracy"]
        results[noise], _ = run_model_task(
            _sweep, summary["checkpoint"], held, samples_per_prompt=cfg.samples_per_prompt, seed=cfg.seed + 11,
            scale=cfg.guidance_scale, levels=levels, num_frames=preset.num_frames, height=preset.height,
            width=preset.width, steps=cfg.sample_steps, use_gpu=use_gpu_default(None),
            what=f"the guidance sweep of the {noise} latent reward", timeout_s=7200.0)
        log.info(f"\n--- latent reward ({noise}) held-out accuracy: {summary['val_accuracy']}")
    table = sweep_table(results)
    write_text_atomic(out / "results.json", json.dumps({"sweeps": results, "latent_reward_val": training}, indent=2))
    if ray.is_initialized():
        ray.shutdown()
    return job.complete({"table": "\n" + table, "latent_reward_val": training, "results_json": str(out / "results.json")})


def _sweep(checkpoint: str, held, **kwargs) -> dict:
    """``guidance_sweep`` of the tiny-world generator guided by the latent reward at ``checkpoint``, with every
    model on this task's device (a Ray task: ``runtime.placement.run_model_task``)."""
    from videoalign_ray.experiments.nrg_eval import guidance_sweep
    from videoalign_ray.flow.generator import load_generator
    from videoalign_ray.flow.model import PRESETS, TINY_WORLD_ASSET
    from videoalign_ray.reward.latent import LatentRewardGuide, load_latent_reward

    m = load_generator(TINY_WORLD_ASSET, max_text_tokens=PRESETS["tiny-world"].max_text_tokens)
    guide = LatentRewardGuide(load_latent_reward(checkpoint).to(m.device))
    return guidance_sweep(m.transformer, m.text, m.vae, guide, held, **kwargs)
