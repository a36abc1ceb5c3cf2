"""``jobs/train_latent_reward.py``: the Flow-NRG latent reward model on Ray Data latents + Ray Train + DeepSpeed.

Pairs -> latents (the spine's Ray Data pipeline, cached) -> BT/BTT on noisy latents -> ``<output_dir>/final``
(safetensors + config), MLflow metrics (loss, batch accuracy, held-out accuracy at t = 0 / 0.5 / 0.9).
Default data: the synthetic world, training prompts for training and held-out prompts for validation.
Re-running with the same output folder resumes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from videoalign_ray.runtime.job import job_run
from videoalign_ray.sections import DataSection, ModelSection, RuntimeSection, TrainSection


class LatentRewardConfig(RuntimeSection, DataSection, ModelSection, TrainSection):
    """Config of ``jobs/train_latent_reward.py``."""

    output_dir: str = "outputs/latent_reward"
    val_data: str | None = Field(None, description="Validation table; default: held-out synthetic prompts.")
    num_blocks: int = Field(2, ge=1, description="K: generator blocks copied into the reward trunk.")
    loss: Literal["btt", "bt"] = "btt"
    noise: Literal["noisy", "clean"] = Field(
        "noisy", description="noisy: t ~ U(0,1), one t and eps per pair (paper); clean: t = 0 (ablation)."
    )
    train_pairs: int = Field(512, ge=2, description="Synthetic pairs for the default data.")
    val_pairs: int = Field(128, ge=2, description="Synthetic held-out pairs for the default validation data.")
    max_steps: int = 600
    batch_size: int = 8
    lr: float | None = Field(3e-4, gt=0, description="Learning rate (paper, full training of Wan blocks: 5e-6).")
    checkpoint_every: int = 200
    log_every: int = 10

    def effective(self):
        """Preset defaults resolved (clip size)."""
        from videoalign_ray.pipelines.effective import CLIP_KEYS, with_generator_defaults

        return with_generator_defaults(self, CLIP_KEYS)


def _encode(pairs, cfg: LatentRewardConfig, model_dir: Path, out: Path, use_gpu: bool):
    from videoalign_ray.flow.pipeline import encode_pairs
    from videoalign_ray.pipelines.flow_dpo import encode_spec
    from videoalign_ray.reward.pipeline import labels_of

    return encode_pairs(pairs, encode_spec(cfg, model_dir, out, use_gpu),
                        {p.pair_id: {"labels": labels_of(p)} for p in pairs})


def run_latent_reward(cfg: LatentRewardConfig) -> dict:
    """Train and export; returns the summary (also ``<output_dir>/summary.json``).

    Raises:
        DataError: no usable pair or too many rejects; ModelPathError: the real preset without a folder.
    """
    cfg = cfg.effective()
    with job_run(cfg, start_ray=True) as job:
        return _run(cfg, job)


def _run(cfg: LatentRewardConfig, job) -> dict:
    import numpy as np
    import torch

    from videoalign_ray.data.ingest import load_pairs_ray
    from videoalign_ray.data.io import check_reject_budget, write_rejects
    from videoalign_ray.flow.model import resolve_model_dir
    from videoalign_ray.reward.latent import LatentRewardModel, from_generator, save_latent_reward
    from videoalign_ray.reward.latent_train_loop import (
        LatentRewardLoopConfig,
        heldout_accuracy,
        loop_config_dict,
        train_loop_per_worker,
    )
    from videoalign_ray.runtime.launch import (
        fit_with_timeout,
        make_trainer,
        resolve_grad_accum,
        split_for_workers,
    )
    from videoalign_ray.runtime.placement import resolve_bf16, use_gpu_default
    from videoalign_ray.synthetic.world import train_val_tables

    out, tracker, tracking_uri = job.out, job.tracker, job.tracking_uri
    use_gpu = use_gpu_default(cfg.use_gpu)
    model_dir = resolve_model_dir(cfg.preset, cfg.model_path, out, cfg.seed)
    data, val_data = train_val_tables(out / "data", cfg.data, cfg.val_data, train_pairs=cfg.train_pairs,
                                      val_pairs=cfg.val_pairs, seed=cfg.seed)
    loaded, loaded_val = load_pairs_ray(data, keep_ties=True), load_pairs_ray(val_data, keep_ties=True)
    enc, enc_val = _encode(loaded.pairs, cfg, model_dir, out, use_gpu), _encode(loaded_val.pairs, cfg, model_dir,
                                                                                 out, use_gpu)
    rejects = loaded.rejects + enc.rejects
    write_rejects(out / "rejects.csv", rejects + loaded_val.rejects + enc_val.rejects)
    tracker.log_artifact(out / "rejects.csv")
    bad = {r.row for r in enc.rejects}
    loaded.pairs = [p for p in loaded.pairs if p.row not in bad]
    loaded.rejects = rejects
    check_reject_budget(loaded, cfg.max_reject_fraction)

    shards, per_worker, micro_batch = split_for_workers(enc, cfg.num_workers, cfg.batch_size)
    loop_cfg = LatentRewardLoopConfig(
        model_dir=str(model_dir), num_blocks=cfg.num_blocks, loss=cfg.loss, noise=cfg.noise, lr=cfg.lr or 3e-4,
        weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, micro_batch=micro_batch,
        grad_accum=resolve_grad_accum(cfg.global_batch, micro_batch, cfg.num_workers, cfg.grad_accum),
        zero_stage=cfg.zero_stage, bf16=resolve_bf16(cfg.precision, use_gpu),
        max_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps,
        lr_schedule=cfg.lr_schedule, min_lr_ratio=cfg.min_lr_ratio, checkpoint_every=cfg.checkpoint_every,
        log_every=cfg.log_every, seed=cfg.seed, mlflow_tracking_uri=tracking_uri, mlflow_run_id=tracker.run_id,
        fault_marker=str(out / ".fault_injected"), fail_at_step=cfg.fail_at_step, cache_dir=enc.cache_dir,
    )
    trainer = make_trainer(
        train_loop_per_worker, loop_config_dict(loop_cfg), shards=shards, num_workers=cfg.num_workers,
        use_gpu=use_gpu, out=out, run_name=cfg.run_name or out.name, max_failures=cfg.max_failures,
        num_to_keep=cfg.num_to_keep,
        cpus_per_worker=cfg.cpus_per_worker, storage_path=cfg.storage_path,
    )
    result = fit_with_timeout(trainer, cfg.fit_timeout_s, f"latent reward training {out.name!r}")
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        from safetensors.torch import load_file

        state = load_file(str(Path(d) / "model" / "model.safetensors"))
        steps = json.loads((Path(d) / "state.json").read_text())["step"]
    model: LatentRewardModel = from_generator(model_dir, cfg.num_blocks)
    model.load_state_dict(state)
    model.eval()
    final = save_latent_reward(model, out / "final", source=str(model_dir))

    rows = enc_val.dataset.take_all() if enc_val.dataset is not None else []
    acc = {}
    if rows:
        def stack(k):
            return torch.from_numpy(np.stack([r[k] for r in rows]))

        acc = heldout_accuracy(model, stack("chosen"), stack("rejected"), stack("prompt_embeds"), stack("labels"),
                               seed=cfg.seed)
        tracker.log_metrics({f"val/{k}": v for k, v in acc.items()}, step=steps)
    tracker.log_artifact(final, "final")
    summary = {"train_pairs": len(loaded.pairs), "val_pairs": len(rows), "rejects": len(rejects), "steps": steps,
               "pairs_per_worker": per_worker, "noise": cfg.noise, "num_blocks": cfg.num_blocks,
               "val_accuracy": {k: round(v, 4) for k, v in acc.items()}, "checkpoint": str(final),
               "resumed_mlflow_run": job.resumed}
    return job.complete(summary)
