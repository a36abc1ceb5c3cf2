"""``jobs/generate.py``: text-to-video sampling with optional Flow-NRG guidance, scored, written as mp4s.

Guidance runs in this process with a latent reward checkpoint (``--latent-reward``) by default, or through
the Serve reward app's ``guide`` method (``--reward-endpoint APP``). Each video gets its ground-truth scores
when its prompt is a synthetic-world prompt and VideoReward scores with ``--reward-checkpoint``; the table
(``scores.csv``) and the videos are logged to MLflow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import Field, model_validator

from videoalign_ray.config import ModelSection, RuntimeSection, Weights, parse_weights
from videoalign_ray.errors import DataError
from videoalign_ray.flow.guidance import DEFAULT_MAX_FACTOR
from videoalign_ray.runtime.job import job_run


class GenerateConfig(RuntimeSection, ModelSection):
    """Config of ``jobs/generate.py``."""

    output_dir: str = "outputs/generate"
    prompts: str | None = Field(None, description="Text file, one prompt per line; default: the world's held-out prompts.")
    samples_per_prompt: int = Field(2, ge=1, description="Videos per prompt (noise seeds seed*100000 + i).")
    policy_weights: str | None = Field(None, description="A flow job's final/ folder (adapter/ or model/).")
    reward_weights: Weights = Field("1,1,1", description="Flow-NRG user weights lambda for VQ,MQ,TA.")
    guidance_scale: float = Field(0.0, ge=0, description="Flow-NRG scale w (0 = no reward guidance).")
    max_guidance_factor: float = Field(DEFAULT_MAX_FACTOR, gt=0, description="Cap on t/(1-t).")
    latent_reward: str | None = Field(None, description="Latent reward checkpoint (jobs/train_latent_reward.py); several "
                                      "joined by commas guide with their mean reward (an ensemble).")
    reward_endpoint: str | None = Field(None, description="Serve app name whose guide() returns the gradient.")
    reward_checkpoint: str | None = Field(None, description="VideoReward checkpoint to score the videos (optional).")
    cfg_scale: float = Field(1.0, ge=1.0, description="Classifier-free guidance scale (1 = off); applied before NRG.")
    sample_steps: int = Field(20, ge=1, description="Euler steps.")
    sample_shift: float = Field(1.0, gt=0, description="Sampling schedule shift.")
    batch_size: int = Field(8, ge=1, description="Videos sampled together.")

    def effective(self):
        """Preset defaults resolved (clip size)."""
        from videoalign_ray.pipelines.effective import CLIP_KEYS, with_generator_defaults

        return with_generator_defaults(self, CLIP_KEYS)

    @model_validator(mode="after")
    def _one_guide_source(self) -> GenerateConfig:
        if self.guidance_scale > 0 and bool(self.latent_reward) == bool(self.reward_endpoint):
            raise ValueError("guidance_scale > 0 needs exactly one of latent_reward (local guide) or "
                             "reward_endpoint (Serve)")
        return self


def read_prompts(path: str | Path) -> list[str]:
    """Non-empty, stripped lines of a text file. Raises ValueError when there is none."""
    prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise DataError(f"{path}: no prompt (expected one prompt per line)")
    return prompts


def make_guide(cfg: GenerateConfig):
    """The reward guide for the sampler: local latent reward model, a Serve endpoint, or None (the config
    guarantees exactly one source when ``guidance_scale > 0``)."""
    if cfg.guidance_scale <= 0:
        return None
    if cfg.reward_endpoint:
        from videoalign_ray.serve.client import ServeGuide

        return ServeGuide(cfg.reward_endpoint)
    from videoalign_ray.reward.latent import LatentRewardGuide, load_latent_reward_spec

    return LatentRewardGuide(load_latent_reward_spec(cfg.latent_reward))


def sample_batch(transformer, text_encoder, vae, prompts: list[str], seeds: list[int], *, num_frames: int,
                 height: int, width: int, steps: int, shift: float, cfg_scale: float = 1.0, guide=None,
                 weights=(1.0, 1.0, 1.0), guidance_scale: float = 0.0,
                 max_guidance_factor: float = DEFAULT_MAX_FACTOR) -> np.ndarray:
    """Sample one video per (prompt, seed): uint8 ``(N, T, H, W, 3)``; NRG when ``guide`` and a scale > 0."""
    from videoalign_ray.flow.model import decode_latents
    from videoalign_ray.flow.sampling import latent_shape, sample_latents

    shape = latent_shape(vae.config, num_frames, height, width)
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    embeds = text_encoder.encode(prompts)
    negative = text_encoder.encode([""] * len(prompts)) if cfg_scale > 1 else None
    latents = sample_latents(transformer, embeds, noise, num_steps=steps, shift=shift, guidance_scale=cfg_scale,
                             negative_embeds=negative, reward_guide=guide, reward_weights=tuple(weights),
                             reward_scale=guidance_scale, max_guidance_factor=max_guidance_factor)
    return decode_latents(vae, latents)


def run_generate(cfg: GenerateConfig) -> dict:
    """Sample, score and write; returns the summary (also ``<output_dir>/summary.json``)."""
    cfg = cfg.effective()
    with job_run(cfg, resume_tracking=False) as job:
        return _run(cfg, job)


def _run(cfg: GenerateConfig, job) -> dict:
    import pandas as pd
    from tqdm.auto import tqdm

    from videoalign_ray.data.video import write_mp4
    from videoalign_ray.flow.model import PRESETS, TextEncoder, load_vae, resolve_model_dir
    from videoalign_ray.runtime.fileio import atomic_path
    from videoalign_ray.synthetic.evaluate import Generator
    from videoalign_ray.synthetic.scorers import score_video
    from videoalign_ray.synthetic.world import all_scenes, split_scenes

    out = job.out
    weights = parse_weights(cfg.reward_weights)
    guide = make_guide(cfg)
    preset = PRESETS[cfg.preset]
    model_dir = resolve_model_dir(cfg.preset, cfg.model_path, out, cfg.seed)
    prompts = read_prompts(cfg.prompts) if cfg.prompts else [s.prompt for s in split_scenes(seed=cfg.seed)[1]]
    scenes = {s.prompt: s for s in all_scenes()}
    num_frames, height, width = cfg.num_frames or preset.num_frames, cfg.height or preset.height, cfg.width or preset.width

    tracker = job.tracker
    transformer = Generator(str(model_dir), cfg.policy_weights).load()
    vae, text = load_vae(model_dir), TextEncoder(model_dir, preset.max_text_tokens)
    jobs = [(p, cfg.seed * 100_000 + i * cfg.samples_per_prompt + k, i, k)
            for i, p in enumerate(prompts) for k in range(cfg.samples_per_prompt)]
    rows = []
    for start in tqdm(range(0, len(jobs), cfg.batch_size), desc="generate", unit="batch"):
        chunk = jobs[start : start + cfg.batch_size]
        videos = sample_batch(transformer, text, vae, [j[0] for j in chunk], [j[1] for j in chunk],
                              num_frames=num_frames, height=height, width=width, steps=cfg.sample_steps, shift=cfg.sample_shift,
                              cfg_scale=cfg.cfg_scale, guide=guide, weights=weights,
                              guidance_scale=cfg.guidance_scale, max_guidance_factor=cfg.max_guidance_factor)
        for (prompt, seed, i, k), video in zip(chunk, videos, strict=True):
            path = write_mp4(out / "videos" / f"{i:03d}_{k:02d}.mp4", video, fps=preset.fps)
            row = {"prompt": prompt, "seed": seed, "path": str(path)}
            if prompt in scenes:
                row.update({f"gt_{d}": v for d, v in score_video(video, scenes[prompt]).items()})
            rows.append(row)
    table = pd.DataFrame(rows)
    if cfg.reward_checkpoint:
        from videoalign_ray.reward.scoring import score_rows
        from videoalign_ray.runtime.launch import init_ray

        init_ray()
        scored = {(r["path"], r["prompt"]): r for r in score_rows(rows, cfg.reward_checkpoint)}
        for d in ("VQ", "MQ", "TA", "Overall"):
            table[f"reward_{d}"] = [scored[(r["path"], r["prompt"])][d] for r in rows]
    with atomic_path(out / "scores.csv") as tmp:
        table.to_csv(tmp, index=False)
    means = {c: float(table[c].mean()) for c in table.columns if c.startswith(("gt_", "reward_"))}
    tracker.log_metrics(means, step=0)
    tracker.log_artifact(out / "scores.csv")
    tracker.log_artifact(out / "videos", "videos")
    summary = {"videos": len(rows), "scores_csv": str(out / "scores.csv"), "means": means,
               "weights": list(weights), "guidance_scale": cfg.guidance_scale,
               "guide": "serve" if cfg.reward_endpoint else ("local" if guide is not None else "none")}
    return job.complete(summary)
