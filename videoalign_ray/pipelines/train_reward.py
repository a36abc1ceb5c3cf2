"""``jobs/train_reward.py``: VideoReward with BTT on Ray Data + Ray Train + DeepSpeed, MLflow, resume.

Default: the synthetic world (train prompts for training, held-out prompts for validation), tiny random
Qwen2-VL, 8 fps (the world's clips last 2 s). Real: ``--preset qwen2-vl-2b --model-path DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from videoalign_ray.data.ingest import load_pairs_ray
from videoalign_ray.data.io import check_reject_budget, write_rejects
from videoalign_ray.errors import DataError, ModelPathError
from videoalign_ray.runtime.fileio import resolve_cache_dir
from videoalign_ray.runtime.job import job_run
from videoalign_ray.sections import DataSection, RuntimeSection, TrainSection

TINY_PIXELS = 56 * 56


class TrainRewardConfig(RuntimeSection, DataSection, TrainSection):
    """Config of ``jobs/train_reward.py``."""

    output_dir: str = "outputs/train_reward"
    val_data: str | None = Field(None, description="Validation table; default: held-out synthetic prompts.")
    preset: Literal["tiny", "qwen2-vl-2b"] = "tiny"
    model_path: str | None = Field(None, description="Qwen2-VL-2B-Instruct: a folder or a Hub id in the local cache "
                                   "(Qwen/Qwen2-VL-2B-Instruct; real preset).")
    output_dim: Literal[1, 3] = Field(3, description="1: one head row shared by the 3 tokens (paper ckpt); 3: per dim.")
    reward_token: Literal["special", "last"] = "special"
    loss: Literal["btt", "bt"] = "btt"
    lm_training: Literal["full", "lora"] | None = Field(None, description="Default: full (tiny), lora (real).")
    fps: float | None = Field(None, gt=0, description="Sampling rate; default 8 (tiny world) or 2 (paper).")
    max_pixels: int | None = Field(None, gt=0, description="Per-frame pixel budget; default 56*56 tiny, 448*448.")
    train_pairs: int = Field(512, ge=2, description="Synthetic pairs for the default data.")
    val_pairs: int = Field(128, ge=2, description="Synthetic held-out pairs for the default validation data.")
    max_steps: int = 1500
    batch_size: int = 8
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="After warm-up: constant lr, or cosine decay to min_lr_ratio * lr at max_steps.")
    warmup_steps: int = Field(50, ge=0, description="Linear learning-rate warm-up steps.")
    checkpoint_every: int = 500
    log_every: int = 10


    def effective(self):
        """Preset defaults resolved: fps 8 / 2, max_pixels 56*56 / 448*448, LM training full / LoRA (tiny / real),
        LoRA rank 64 and alpha 2 x rank, lr 5e-4 / 2e-6, gradient checkpointing off / on."""
        tiny = self.preset == "tiny"
        rank = self.lora_rank or 64
        fill = {"fps": 8.0 if tiny else 2.0, "max_pixels": TINY_PIXELS if tiny else 448 * 448,
                "lm_training": "full" if tiny else "lora", "lora_rank": rank, "lora_alpha": 2.0 * rank,
                "lr": 5e-4 if tiny else 2e-6, "gradient_checkpointing": not tiny}
        return self.model_copy(update={k: v for k, v in fill.items() if getattr(self, k) is None})

def run_train_reward(cfg: TrainRewardConfig) -> dict:
    """Train, validate, export ``<output_dir>/final`` (our checkpoint with normalisation stats).

    Raises:
        ModelPathError: the real preset without ``model_path``. DataError: no usable pair, too many rejects.
    """
    if cfg.preset != "tiny" and not cfg.model_path:
        raise ModelPathError("preset qwen2-vl-2b needs --model-path to a local Qwen2-VL-2B-Instruct folder")
    cfg = cfg.effective()
    with job_run(cfg, start_ray=True) as job:
        return _run(cfg, job)


def _run(cfg: TrainRewardConfig, job) -> dict:
    import numpy as np
    import torch

    from videoalign_ray.reward.checkpoint import save_reward_checkpoint
    from videoalign_ray.reward.pipeline import FrameSpec, decode_pairs
    from videoalign_ray.reward.processor import build_tiny_tokenizer, load_tokenizer
    from videoalign_ray.reward.scheme import ScoringScheme
    from videoalign_ray.reward.train_loop import (
        RewardLoopConfig,
        accuracy_table,
        build_reward_model,
        loop_config_dict,
        score_margins,
        train_loop_per_worker,
    )
    from videoalign_ray.runtime.hub import resolve_model_location
    from videoalign_ray.runtime.launch import (
        fit_with_timeout,
        make_trainer,
        resolve_grad_accum,
        split_for_workers,
    )
    from videoalign_ray.runtime.placement import resolve_bf16, use_gpu_default
    from videoalign_ray.synthetic.world import train_val_tables

    out, tracker, tracking_uri = job.out, job.tracker, job.tracking_uri
    tiny = cfg.preset == "tiny"
    model_path = str(resolve_model_location(cfg.model_path, "--model-path")) if cfg.model_path else None
    data, val_data = train_val_tables(out / "data", cfg.data, cfg.val_data, train_pairs=cfg.train_pairs,
                                      val_pairs=cfg.val_pairs, seed=cfg.seed)
    loaded, loaded_val = load_pairs_ray(data, keep_ties=True), load_pairs_ray(val_data, keep_ties=True)
    tok_dir = out / "tokenizer"
    if tiny and not (tok_dir / "tokenizer.json").is_file():
        from videoalign_ray.synthetic.world import all_scenes

        prompts = [s.prompt for s in all_scenes()] + [p.prompt for p in loaded.pairs]
        build_tiny_tokenizer(prompts).save_pretrained(tok_dir)
    elif not tiny and not tok_dir.is_dir():
        load_tokenizer(model_path).save_pretrained(tok_dir)

    use_gpu = use_gpu_default(cfg.use_gpu)
    scheme = ScoringScheme(fps=cfg.fps, min_pixels=TINY_PIXELS if tiny else 128 * 28 * 28, max_pixels=cfg.max_pixels)
    spec = FrameSpec.of(scheme)  # new trainings use the project scheme (README: which scheme, and why)
    cache_dir = resolve_cache_dir(cfg.cache_dir, out)
    train_rows, val_rows = decode_pairs(loaded.pairs, spec, cache_dir), decode_pairs(loaded_val.pairs, spec, cache_dir)
    train_rejects, val_rejects = train_rows.rejects, val_rows.rejects
    tracker.log_metrics({f"data/{k}": v for k, v in train_rows.stats.items()}, step=0)
    rejects = loaded.rejects + train_rejects
    write_rejects(out / "rejects.csv", rejects + loaded_val.rejects + val_rejects)
    tracker.log_artifact(out / "rejects.csv")
    bad = {r.row for r in train_rejects}
    loaded.pairs = [p for p in loaded.pairs if p.row not in bad]
    loaded.rejects = rejects
    check_reject_budget(loaded, cfg.max_reject_fraction)

    for name, r in (("training", train_rows), ("validation", val_rows)):
        if r.table is None:
            raise DataError(f"no {name} pair has two decodable videos; see {out / 'rejects.csv'}")
    # Small key rows: each worker loads the frames of its micro-batches from the cache.
    shards, per_worker, micro_batch = split_for_workers(train_rows, cfg.num_workers, cfg.batch_size)
    lm_training, lora_rank = cfg.lm_training, cfg.lora_rank
    loop_cfg = RewardLoopConfig(
        tokenizer_dir=str(tok_dir), model_path=model_path, output_dim=cfg.output_dim,
        reward_token=cfg.reward_token, loss=cfg.loss, lm_training=lm_training, lora_rank=lora_rank,
        lora_alpha=cfg.lora_alpha, lr=cfg.lr, grad_clip=cfg.grad_clip,
        weight_decay=cfg.weight_decay, micro_batch=micro_batch,
        grad_accum=resolve_grad_accum(cfg.global_batch, micro_batch, cfg.num_workers, cfg.grad_accum),
        gradient_checkpointing=cfg.gradient_checkpointing,
        zero_stage=cfg.zero_stage,
        bf16=resolve_bf16(cfg.precision, use_gpu), max_steps=cfg.max_steps,
        warmup_steps=cfg.warmup_steps,
        lr_schedule=cfg.lr_schedule, min_lr_ratio=cfg.min_lr_ratio, checkpoint_every=cfg.checkpoint_every,
        log_every=cfg.log_every,
        seed=cfg.seed, mlflow_tracking_uri=tracking_uri, mlflow_run_id=tracker.run_id,
        fault_marker=str(out / ".fault_injected"), fail_at_step=cfg.fail_at_step, cache_dir=cache_dir,
    )
    trainer = make_trainer(
        train_loop_per_worker, loop_config_dict(loop_cfg), shards=shards, num_workers=cfg.num_workers,
        use_gpu=use_gpu, out=out, run_name=cfg.run_name or out.name, max_failures=cfg.max_failures,
        num_to_keep=cfg.num_to_keep, extra_datasets={"val": val_rows.shard()},
        cpus_per_worker=cfg.cpus_per_worker, storage_path=cfg.storage_path,
    )
    result = fit_with_timeout(trainer, cfg.fit_timeout_s, f"VideoReward training {out.name!r}")
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")

    # Export: plain weights (LoRA merged) + normalisation measured on the validation videos.
    with result.checkpoint.as_directory() as d:
        from safetensors.torch import load_file

        state = load_file(Path(d) / "model" / "model.safetensors")
        steps = json.loads((Path(d) / "state.json").read_text())["step"]
    plain, proc = build_reward_model(str(tok_dir), model_path, cfg.output_dim, cfg.reward_token, cfg.seed)
    if lm_training == "lora":  # the LM's adapters folded in by peft
        from videoalign_ray.flow.lora_merge import merge_peft_state

        plain = merge_peft_state(plain, state, rank=lora_rank, alpha=loop_cfg.lora_alpha)
    else:
        plain.load_state_dict(state)
    plain.eval()
    val_rows = val_rows.dataset.take_all()
    ra, rb = score_margins(plain, proc, val_rows, "cpu")
    allr = np.concatenate([ra, rb])
    with torch.no_grad():
        plain.norm_mean.copy_(torch.from_numpy(allr.mean(0)).float())
        plain.norm_std.copy_(torch.from_numpy(allr.std(0) + 1e-8).float())
    table = accuracy_table(ra, rb, np.stack([r["labels"] for r in val_rows]))
    final = save_reward_checkpoint(plain, proc.tokenizer, out / "final",
                                   {"fps": spec.fps, "min_pixels": spec.min_pixels, "max_pixels": spec.max_pixels,
                                    "steps": steps}, scheme=scheme)
    tracker.log_metrics({f"final/{k}": v for k, v in table.items()}, step=steps)
    tracker.log_artifact(final, "final")
    summary = {"train_pairs": len(loaded.pairs), "val_pairs": len(val_rows), "rejects": len(rejects),
               "steps": steps, "val_accuracy": {k: round(v, 4) for k, v in table.items()},
               "checkpoint": str(final), "resumed_mlflow_run": job.resumed}
    return job.complete(summary)
