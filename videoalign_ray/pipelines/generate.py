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

from videoalign_ray.errors import DataError
from videoalign_ray.flow.guidance import DEFAULT_MAX_FACTOR
from videoalign_ray.runtime.job import job_run
from videoalign_ray.sections import ModelSection, RuntimeSection, SamplingSection, Weights, parse_weights


class GenerateConfig(RuntimeSection, ModelSection, SamplingSection):
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
    batch_size: int = Field(8, ge=1, description="Videos sampled together.")
    sample_timeout_s: float = Field(
        7200.0, gt=0, description="Seconds the sampler actor may take to start (a GPU free, models loaded) and "
        "then for each batch, before the job fails naming what it waited for.")

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
                 max_guidance_factor: float = DEFAULT_MAX_FACTOR, scheduler=None,
                 negative_prompt: str = "") -> np.ndarray:
    """Sample one video per (prompt, seed): uint8 ``(N, T, H, W, 3)``; NRG when ``guide`` and a scale > 0.

    Noise per seed is drawn on CPU (the same videos on any device); ``scheduler`` None samples with Euler on the
    ``shift``-ed schedule (``flow.sampling.sample_latents``); CFG with ``negative_prompt`` when ``cfg_scale > 1``.
    """
    from videoalign_ray.flow.model import decode_latents
    from videoalign_ray.flow.sampling import latent_shape, negative_prompt_text, sample_latents

    shape = latent_shape(vae.config, num_frames, height, width)
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    embeds = text_encoder.encode(prompts)
    negative = text_encoder.encode([negative_prompt_text(negative_prompt)] * len(prompts)) if cfg_scale > 1 else None
    latents = sample_latents(transformer, embeds, noise, num_steps=steps, shift=shift, guidance_scale=cfg_scale,
                             negative_embeds=negative, reward_guide=guide, reward_weights=tuple(weights),
                             reward_scale=guidance_scale, max_guidance_factor=max_guidance_factor, scheduler=scheduler)
    return decode_latents(vae, latents)


class SamplerActor:
    """Ray actor (``ray.remote(SamplerActor)``, one GPU where the cluster has them) that holds the generator, VAE,
    text encoder and the Flow-NRG guide on its device and samples batches: the driver only writes the files."""

    def __init__(self, cfg: GenerateConfig, model_dir: str):
        from videoalign_ray.flow.generator import load_generator
        from videoalign_ray.flow.model import PRESETS
        from videoalign_ray.flow.sampling import SamplingSettings, sampler_name
        from videoalign_ray.runtime.placement import worker_info
        from videoalign_ray.synthetic.world import all_scenes

        self.cfg = cfg
        preset = PRESETS[cfg.preset]
        self.models = load_generator(model_dir, cfg.policy_weights, max_text_tokens=preset.max_text_tokens)
        self.guide = make_guide(cfg)
        self.scenes = {s.prompt: s for s in all_scenes()}
        self.fps = preset.fps
        self.size = (cfg.num_frames or preset.num_frames, cfg.height or preset.height, cfg.width or preset.width)
        self.scheduler = SamplingSettings.of(cfg).scheduler(model_dir, reward_guidance=cfg.guidance_scale > 0)
        self.info = {**worker_info(), "sampler": sampler_name(self.scheduler)}

    def where(self) -> dict:
        """pid, node, gpu_ids and device of this actor."""
        return self.info

    def videos(self, prompts: list[str], seeds: list[int]) -> np.ndarray:
        """uint8 videos ``(N, T, H, W, 3)``, one per (prompt, seed), with the job's sampling settings."""
        cfg, m = self.cfg, self.models
        num_frames, height, width = self.size
        return sample_batch(m.transformer, m.text, m.vae, prompts, seeds, num_frames=num_frames, height=height,
                              width=width, steps=cfg.sample_steps, shift=cfg.sample_shift or 1.0,
                              cfg_scale=cfg.cfg_scale, guide=self.guide, weights=parse_weights(cfg.reward_weights),
                              guidance_scale=cfg.guidance_scale, max_guidance_factor=cfg.max_guidance_factor,
                              scheduler=self.scheduler, negative_prompt=cfg.negative_prompt)

    def sample(self, prompts: list[str], seeds: list[int]) -> list[dict]:
        """One batch: per video ``{"mp4": bytes, "gt": {dim: score} or None}`` (ground truth for world prompts)."""
        import tempfile

        from videoalign_ray.data.encode import write_mp4
        from videoalign_ray.synthetic.scorers import score_video

        videos = self.videos(prompts, seeds)
        out = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, (prompt, video) in enumerate(zip(prompts, videos, strict=True)):
                mp4 = write_mp4(Path(tmp) / f"{i}.mp4", video, fps=self.fps).read_bytes()
                scene = self.scenes.get(prompt)
                out.append({"mp4": mp4, "gt": score_video(video, scene) if scene is not None else None})
        return out


def run_generate(cfg: GenerateConfig) -> dict:
    """Sample, score and write; returns the summary (also ``<output_dir>/summary.json``)."""
    cfg = cfg.effective()
    with job_run(cfg, resume_tracking=False, start_ray=True) as job:
        return _run(cfg, job)


def _run(cfg: GenerateConfig, job) -> dict:
    import pandas as pd
    import ray

    from videoalign_ray.flow.model import resolve_model_dir
    from videoalign_ray.runtime.fileio import atomic_path, write_files
    from videoalign_ray.runtime.launch import wait_all
    from videoalign_ray.runtime.placement import model_task_options, use_gpu_default
    from videoalign_ray.runtime.progress import progress
    from videoalign_ray.synthetic.world import split_scenes

    out = job.out
    weights = parse_weights(cfg.reward_weights)
    model_dir = resolve_model_dir(cfg.preset, cfg.model_path, out, cfg.seed)
    prompts = read_prompts(cfg.prompts) if cfg.prompts else [s.prompt for s in split_scenes(seed=cfg.seed)[1]]
    tracker = job.tracker
    actor = ray.remote(SamplerActor).options(**model_task_options(use_gpu_default(None)), max_restarts=0).remote(
        cfg, str(model_dir))
    try:
        (where,) = wait_all([actor.where.remote()], "the sampler actor to load the models", cfg.sample_timeout_s)
        jobs = [(p, cfg.seed * 100_000 + i * cfg.samples_per_prompt + k, i, k)
                for i, p in enumerate(prompts) for k in range(cfg.samples_per_prompt)]
        rows = []
        with progress(len(jobs), "generate", "video") as bar:
            for start in range(0, len(jobs), cfg.batch_size):
                chunk = jobs[start : start + cfg.batch_size]
                (results,) = wait_all([actor.sample.remote([j[0] for j in chunk], [j[1] for j in chunk])],
                                      f"videos {start}..{start + len(chunk) - 1}", cfg.sample_timeout_s)
                for (prompt, seed, i, k), res in zip(chunk, results, strict=True):
                    (path,) = write_files(out / "videos", {f"{i:03d}_{k:02d}.mp4": res["mp4"]})
                    row = {"prompt": prompt, "seed": seed, "path": str(path)}
                    row.update({f"gt_{d}": v for d, v in (res["gt"] or {}).items()})
                    rows.append(row)
                bar.update(len(chunk))
    finally:
        ray.kill(actor)
    table = pd.DataFrame(rows)
    if cfg.reward_checkpoint:
        from videoalign_ray.reward.scoring import score_rows

        scored = {(r["path"], r["prompt"]): r for r in score_rows(rows, cfg.reward_checkpoint)}
        for d in ("VQ", "MQ", "TA", "Overall"):
            table[f"reward_{d}"] = [scored[(r["path"], r["prompt"])][d] for r in rows]
    with atomic_path(out / "scores.csv") as tmp:
        table.to_csv(tmp, index=False)
    means = {c: float(table[c].mean()) for c in table.columns if c.startswith(("gt_", "reward_"))}
    tracker.log_metrics(means, step=0)
    tracker.log_artifact(out / "scores.csv")
    tracker.log_artifact(out / "videos", "videos")
    guide = "serve" if cfg.reward_endpoint else ("local" if cfg.guidance_scale > 0 else "none")
    summary = {"videos": len(rows), "scores_csv": str(out / "scores.csv"), "means": means,
               "weights": list(weights), "guidance_scale": cfg.guidance_scale, "guide": guide,
               "sampler": where["sampler"], "sampler_worker": where}
    return job.complete(summary)
