"""The Flow-DPO (and SFT) job: data -> Ray Data latents -> Ray Train + DeepSpeed -> adapter, samples, MLflow.

``jobs/flow_dpo.py`` is a thin wrapper around :func:`run_flow_job`. Re-running with the same output
folder resumes from the latest complete checkpoint (Ray Train's run snapshot in ``<output_dir>/ray_results``)
and re-attaches to the same MLflow run.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from videoalign_ray.data.ingest import load_pairs_ray
from videoalign_ray.data.io import LoadResult, check_reject_budget, write_rejects
from videoalign_ray.flow.objectives.dpo import DPOSection
from videoalign_ray.flow.objectives.registry import get_objective, objective_names
from videoalign_ray.flow.objectives.rwr import RWRSection
from videoalign_ray.runtime.fileio import atomic_dir, resolve_cache_dir
from videoalign_ray.runtime.job import job_run
from videoalign_ray.sections import (
    DataSection,
    ModelSection,
    RuntimeSection,
    SamplingSection,
    TrainSection,
    Weights,
    parse_weights,
)

log = logging.getLogger(__name__)


_OFFLINE = Literal[objective_names("offline")]  # type: ignore[valid-type]  # the registered offline objectives


class FlowDPOConfig(RuntimeSection, DataSection, ModelSection, TrainSection, SamplingSection, DPOSection, RWRSection):
    """Config of ``jobs/flow_dpo.py`` (every key settable in YAML and as ``--kebab-case`` flag); each objective's
    own knobs come from its section (``flow/objectives/<name>.py``)."""

    output_dir: str = Field("outputs/flow_dpo", description="Checkpoints, caches, rejects.csv, MLflow store.")
    objective: _OFFLINE = Field(
        "dpo", description="dpo: Flow-DPO; rwr: Flow-RWR on every video, weighted by its reward; sft: flow "
        "matching on chosen only (w = 1); pretrain: on every video (w = 1). Registered in "
        "videoalign_ray/flow/objectives/registry.py.",
    )
    reward_checkpoint: str | None = Field(
        None, description="RWR: score the videos with this VideoReward checkpoint (default: the MOS columns)."
    )
    reward_weights: Weights = Field("1,1,1", description="RWR: weights of normalised VQ,MQ,TA in the reward mean.")
    t_sampling: Literal["uniform", "logit_normal"] = Field("uniform", description="Training timestep distribution.")
    logit_mean: float = 0.0
    logit_std: float = 1.0
    t_shift: float = Field(1.0, gt=0, description="Timestep shift s*t/(1+(s-1)t) for training t.")
    init_weights: str | None = Field(
        None, description="A LoRA run's final/ folder (or its adapter/) that the new adapter starts from "
        "(online rounds); the reference stays the base unless --reference-weights is given.")
    reference_weights: str | None = Field(
        None, description="A LoRA run's final/ folder (or its adapter/) whose policy is the Flow-DPO reference "
        "(online --reference previous): a frozen copy of the base with it merged in (one more copy of the base "
        "weights in memory). Default: the base.")
    val_data: str | None = Field(None, description="Held-out preference table (same formats as --data): "
                                 "validation loss and metrics (val/loss, val/implicit_acc, ...) every --eval-every "
                                 "steps, and reference-vs-policy samples of its prompts.")
    eval_every: int | None = Field(None, ge=1, description="Steps between validations; default: --checkpoint-every.")
    val_samples: int = Field(2, ge=0, description="Validation prompts sampled (reference and policy, same noise) "
                             "at each sample evaluation, logged to MLflow as mp4s and a contact sheet (0: none).")
    val_sample_every: int | None = Field(None, ge=1, description="Steps between validation samples; default: "
                                         "--eval-every.")
    num_samples: int = Field(2, ge=0, description="Prompts sampled from reference and policy at the end (mp4).")
    sample_timeout_s: float = Field(
        7200.0, gt=0, description="Seconds the samples' task (one GPU, or CPUs) may take, waiting for a GPU "
        "included, before the job fails naming it (final/ is already published).")
    gpu_memory_gib: float = Field(
        80.0, gt=0, description="GPU memory per worker; a real-preset step that the memory model "
        "(videoalign_ray/flow/memory.py) puts above 85% of it gets a warning before training starts.")

    def effective(self):
        """Preset defaults resolved (lr, LoRA rank and alpha, clip size, gradient checkpointing)."""
        from videoalign_ray.pipelines.effective import with_generator_defaults

        return with_generator_defaults(self)

    @model_validator(mode="after")
    def _reference_weights_need_dpo(self):
        if self.reference_weights and not get_objective(self.objective).uses_reference:
            raise ValueError(f"reference_weights sets the reference model; objective {self.objective!r} has none")
        return self


class FlowRWRConfig(FlowDPOConfig):
    """Config of ``jobs/flow_rwr.py``: the Flow-DPO job's config with ``objective = rwr`` by default
    (``--objective sft`` gives the SFT baseline from the same job)."""

    output_dir: str = Field("outputs/flow_rwr", description="Checkpoints, caches, rejects.csv, MLflow store.")
    objective: _OFFLINE = Field("rwr", description="rwr (default) or sft.")


def _load_data(cfg: FlowDPOConfig, out: Path) -> LoadResult:
    from videoalign_ray.synthetic.world import make_preference_dataset

    data = Path(cfg.data) if cfg.data else make_preference_dataset(out / "builtin_data", seed=cfg.seed)
    # RWR trains on every video (A and B of each row, each with its own reward), whatever the labels say.
    return load_pairs_ray(data, cfg.dimension, keep_ties=get_objective(cfg.objective).keep_ties)


def _rwr_extras(cfg: FlowDPOConfig, loaded: LoadResult) -> dict:
    """RWR: per-pair reward columns; pairs whose videos cannot be scored join ``loaded.rejects``."""
    from videoalign_ray.pipelines.rwr_rewards import checkpoint_rewards, mos_rewards, pair_extras

    weights = parse_weights(cfg.reward_weights)
    if cfg.reward_checkpoint:
        rewards, rejects = checkpoint_rewards(loaded.pairs, cfg.reward_checkpoint)
        bad = {r.row for r in rejects}
        loaded.pairs = [p for p in loaded.pairs if p.row not in bad]
        loaded.rejects += rejects
    else:
        rewards = mos_rewards(loaded.pairs, weights)
    return pair_extras(loaded.pairs, rewards, weights)


def _publish_final(checkpoint_dir: Path, out: Path, cfg: FlowDPOConfig, card: dict) -> Path:
    """Publish the final weights + config + model card under ``<out>/final`` (atomically): a LoRA run as
    ``pytorch_lora_weights.safetensors`` (diffusers) and ``adapter/`` (peft), a full run as ``model/``.
    ``card``: ``data``, ``pairs`` and ``metrics`` for ``README.md``."""
    from videoalign_ray.flow.lora_export import read_adapter_state, write_published_lora
    from videoalign_ray.pipelines.model_card import base_model_name, model_card_text

    base = base_model_name(cfg.preset, cfg.model_path)
    lora = (checkpoint_dir / "adapter").is_dir()
    with atomic_dir(out / "final") as tmp:
        if lora:
            state, rank, alpha = read_adapter_state(checkpoint_dir / "adapter")
            write_published_lora(state, rank, alpha, tmp, base_model=base)
        if (checkpoint_dir / "model").is_dir():
            shutil.copytree(checkpoint_dir / "model", tmp / "model")
        shutil.copy2(checkpoint_dir / "state.json", tmp / "state.json")
        flat = cfg.effective().to_flat_dict()
        (tmp / "config.yaml").write_text(yaml.safe_dump(flat, sort_keys=True))
        steps = json.loads((checkpoint_dir / "state.json").read_text())["step"]
        (tmp / "README.md").write_text(model_card_text(flat, base, card["data"], card["pairs"], steps,
                                                       card["metrics"], lora), encoding="utf-8")
    return out / "final"


def _validation_data(cfg: FlowDPOConfig, spec, out: Path, tracker):
    """The ``--val-data`` pairs encoded like the training pairs (key rows), and their prompts in table order;
    rows that cannot be used go to ``val_rejects.csv``.

    Raises:
        DataError: no usable validation pair.
    """
    from videoalign_ray.data.ingest import load_pairs_ray
    from videoalign_ray.errors import DataError
    from videoalign_ray.flow.pipeline import encode_pairs

    loaded = load_pairs_ray(Path(cfg.val_data), cfg.dimension, keep_ties=get_objective(cfg.objective).keep_ties)
    extras = _rwr_extras(cfg, loaded) if get_objective(cfg.objective).needs_rewards else None
    encoded = encode_pairs(loaded.pairs, spec, extras) if loaded.pairs else None
    rejects = loaded.rejects + (encoded.rejects if encoded else [])
    tracker.log_artifact(write_rejects(out / "val_rejects.csv", rejects))
    if encoded is None or encoded.count() == 0:
        raise DataError(f"--val-data {cfg.val_data}: no usable pair ({len(rejects)} rejected: see "
                        f"{out / 'val_rejects.csv'})")
    bad = {r.row for r in rejects}
    prompts = list(dict.fromkeys(p.prompt for p in loaded.pairs if p.row not in bad))
    tracker.log_metrics({"data/val_pairs": encoded.count(), "data/val_rejects": len(rejects)}, step=0)
    return encoded, prompts


def _init_adapter(init_weights: str | None, flag: str = "--init-weights") -> str | None:
    """The ``adapter/`` folder of ``init_weights`` (a final/ folder or the adapter folder itself) given as ``flag``.

    Raises:
        ModelPathError: the folder holds no adapter.
    """
    from videoalign_ray.errors import ModelPathError

    if not init_weights:
        return None
    path = Path(init_weights).resolve()
    for cand in (path / "adapter", path):
        if (cand / "adapter_config.json").is_file():
            return str(cand)
    raise ModelPathError(f"{flag} {init_weights}: no adapter/ with adapter_config.json")


def encode_spec(cfg, model_dir: Path, out: Path, use_gpu: bool, bf16: bool = False):
    """The Ray Data encoding spec of a generator job (``cfg``: a config with the data and model sections):
    video size from the flags or the preset, frames at the preset's rate (``data.sampling.ClipRule``), latents
    stored in the training dtype (``bf16``), latent cache under ``<out>/cache`` unless ``--cache-dir``."""
    from videoalign_ray.data.sampling import ClipRule
    from videoalign_ray.flow.model import PRESETS, component_id, vae_temporal_factor
    from videoalign_ray.flow.pipeline import EncodeSpec

    preset = PRESETS[cfg.preset]
    num_frames = cfg.num_frames or preset.num_frames
    rule = ClipRule(fps=preset.fps, num_frames=num_frames, start=cfg.clip_start, short_clips=cfg.short_clips,
                    temporal_factor=vae_temporal_factor(model_dir), min_frames=cfg.min_clip_frames)
    return EncodeSpec(
        model_dir=str(model_dir), cache_dir=resolve_cache_dir(cfg.cache_dir, out),
        num_frames=num_frames, height=cfg.height or preset.height,
        width=cfg.width or preset.width, max_text_tokens=preset.max_text_tokens,
        vae_id=component_id(model_dir, "vae"),
        text_encoder_id="umt5" if (model_dir / "text_encoder").is_dir() else "all-MiniLM-L6-v2",
        min_decoded_fraction=cfg.min_decoded_fraction, video_backend=cfg.video_backend, use_gpu=use_gpu,
        encoder_actors=cfg.encoder_actors or default_encoder_actors(use_gpu), clip_rule=rule,
        latent_dtype="bfloat16" if bf16 else "float32",
    )


def default_encoder_actors(use_gpu: bool) -> int:
    """One VAE encoder actor per GPU of the cluster (every GPU encodes while the others would wait), else 1;
    at most the cluster's CPUs minus one, since each actor holds a CPU and the decode tasks that feed them need
    one too (2 GPUs and 2 CPUs with 2 actors: no decode task could start, and the stage waited forever)."""
    import ray

    resources = ray.cluster_resources()
    if not use_gpu:
        return 1
    return max(1, min(int(resources.get("GPU", 0)), int(resources.get("CPU", 0)) - 1))


def run_flow_job(cfg: FlowDPOConfig) -> dict:
    """Run the whole job; returns the summary dict (also written to ``<output_dir>/summary.json``).

    Raises:
        DataError: no usable pair, or too many rejects.
        ModelPathError: the real preset without a model folder.
    """
    cfg = cfg.effective()
    with job_run(cfg, start_ray=True) as job:
        return _run(cfg, job)


def _check_memory(cfg: FlowDPOConfig, model_dir: Path, clip: tuple[int, int, int], micro_batch: int, lora_rank: int,
                  checkpointing: bool, tracker) -> None:
    """Log the memory model's GiB for this step (MLflow ``memory/*``) and warn when it will not fit."""
    from videoalign_ray.flow.memory import step_memory

    config = json.loads((model_dir / "transformer" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    num_frames, height, width = clip
    est = step_memory(config, num_frames=num_frames, height=height, width=width, micro_batch=micro_batch,
                      lora_rank=lora_rank if cfg.finetune == "lora" else None, gradient_checkpointing=checkpointing,
                      zero_stage=cfg.zero_stage, world_size=cfg.num_workers)
    tracker.log_metrics({"memory/predicted_gib": est.total, "memory/activations_gib": est.activations}, step=0)
    line = (f"memory model: {est.total:.1f} GiB per worker ({est.weights:.1f} weights + {est.trainable:.1f} trainable "
            f"+ {est.activations:.1f} activations) for {micro_batch} pair(s) of {num_frames}x{height}x{width}, "
            f"gradient checkpointing {'on' if checkpointing else 'off'}")
    if est.fits(cfg.gpu_memory_gib):
        log.info(line)
    else:
        log.warning("%s: above 85%% of --gpu-memory-gib %.0f; lower --batch-size (raise --grad-accum or set "
                    "--global-batch) or turn on --gradient-checkpointing", line, cfg.gpu_memory_gib)


def _run(cfg: FlowDPOConfig, job) -> dict:
    from videoalign_ray.flow.model import PRESETS, resolve_model_dir
    from videoalign_ray.flow.pipeline import encode_pairs
    from videoalign_ray.flow.train_loop import LoopConfig, loop_config_dict, train_loop_per_worker
    from videoalign_ray.runtime.launch import (
        fit_with_timeout,
        make_trainer,
        resolve_grad_accum,
        split_for_workers,
    )
    from videoalign_ray.runtime.placement import resolve_bf16, use_gpu_default

    out, tracker = job.out, job.tracker
    run_name = cfg.run_name or out.name
    preset = PRESETS[cfg.preset]
    use_gpu = use_gpu_default(cfg.use_gpu)
    bf16 = resolve_bf16(cfg.precision, use_gpu)
    model_dir = resolve_model_dir(cfg.preset, cfg.model_path, out, cfg.seed)
    num_frames, height, width = cfg.num_frames, cfg.height, cfg.width

    loaded = _load_data(cfg, out)
    objective = get_objective(cfg.objective)
    extras = _rwr_extras(cfg, loaded) if objective.needs_rewards else None
    spec = encode_spec(cfg, model_dir, out, use_gpu, bf16)
    encoded = encode_pairs(loaded.pairs, spec, extras) if loaded.pairs else None
    val, val_prompts = _validation_data(cfg, spec, out, tracker) if cfg.val_data else (None, [])
    rejects = loaded.rejects + (encoded.rejects if encoded else [])
    rejects_path = write_rejects(out / "rejects.csv", rejects)
    bad_pair_rows = {r.row for r in (encoded.rejects if encoded else [])}
    loaded.pairs = [p for p in loaded.pairs if p.row not in bad_pair_rows]
    loaded.rejects = rejects
    tracker.log_artifact(rejects_path)
    counts = {**loaded.summary(), **(encoded.stats if encoded else {})}
    tracker.log_metrics({f"data/{k}": v for k, v in counts.items()}, step=0)
    check_reject_budget(loaded, cfg.max_reject_fraction)

    n_pairs = encoded.count()
    key_shards, per_worker, micro_batch = split_for_workers(encoded, cfg.num_workers, cfg.batch_size)
    shards = key_shards  # small key rows: each worker loads its micro-batches' latents from the cache
    lora_rank = cfg.lora_rank
    grad_accum = resolve_grad_accum(cfg.global_batch, micro_batch, cfg.num_workers, cfg.grad_accum)
    checkpointing = cfg.gradient_checkpointing
    if not cfg.preset.startswith("tiny"):
        _check_memory(cfg, model_dir, (num_frames, height, width), micro_batch, lora_rank, checkpointing, tracker)
    loop_cfg = LoopConfig(
        model_dir=str(model_dir), objective=cfg.objective, finetune=cfg.finetune, lora_rank=lora_rank,
        lora_alpha=cfg.lora_alpha, lr=cfg.lr, weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip, objective_args=objective.args(cfg), t_sampling=cfg.t_sampling,
        logit_mean=cfg.logit_mean, logit_std=cfg.logit_std, t_shift=cfg.t_shift, micro_batch=micro_batch,
        grad_accum=grad_accum, zero_stage=cfg.zero_stage, bf16=bf16, max_steps=cfg.max_steps,
        checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every, seed=cfg.seed,
        mlflow_tracking_uri=job.tracking_uri, mlflow_run_id=tracker.run_id, fault_marker=str(out / ".fault_injected"),
        fail_at_step=cfg.fail_at_step, warmup_steps=cfg.warmup_steps,
        lr_schedule=cfg.lr_schedule, min_lr_ratio=cfg.min_lr_ratio, init_adapter=_init_adapter(cfg.init_weights),
        reference_adapter=_init_adapter(cfg.reference_weights, "--reference-weights"),
        gradient_checkpointing=checkpointing, cache_dir=spec.cache_dir, job_started_unix=job.started_unix,
        eval_every=(cfg.eval_every or cfg.checkpoint_every) if val else 0, val_pairs=val.count() if val else 0,
        val_prompts=tuple(val_prompts[: cfg.val_samples]),
        val_sample_every=(cfg.val_sample_every or cfg.eval_every or cfg.checkpoint_every) if cfg.val_samples else 0,
        sample_steps=cfg.sample_steps, sample_shift=cfg.sample_shift, cfg_scale=cfg.cfg_scale, sampler=cfg.sampler,
        negative_prompt=cfg.negative_prompt,
        max_text_tokens=preset.max_text_tokens, fps=preset.fps,
    )
    job.mark("data")
    trainer = make_trainer(
        train_loop_per_worker, loop_config_dict(loop_cfg), shards=shards, num_workers=cfg.num_workers,
        use_gpu=use_gpu, out=out, run_name=run_name, max_failures=cfg.max_failures, num_to_keep=cfg.num_to_keep,
        cpus_per_worker=cfg.cpus_per_worker, storage_path=cfg.storage_path,
        extra_datasets={"val": val.shard()} if val else None,
    )
    result = fit_with_timeout(trainer, cfg.fit_timeout_s, f"Flow-DPO training {run_name!r}")
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint (max_steps = 0?)")
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    card = {"data": cfg.data or "the built-in synthetic preference dataset", "pairs": n_pairs, "metrics": metrics}
    with result.checkpoint.as_directory() as ckpt_dir:
        final = _publish_final(Path(ckpt_dir), out, cfg, card)
    state = json.loads((final / "state.json").read_text())
    tracker.log_artifact(final, "final")

    samples, samples_worker = [], None
    if cfg.num_samples > 0:
        from videoalign_ray.flow.render import render_comparison
        from videoalign_ray.flow.sampling import SamplingSettings
        from videoalign_ray.runtime.fileio import write_files
        from videoalign_ray.runtime.placement import run_model_task

        prompts = sorted({p.prompt for p in loaded.pairs})[: cfg.num_samples]
        files, samples_worker = run_model_task(
            render_comparison, str(model_dir), str(final), prompts, num_frames=num_frames, height=height,
            width=width, max_text_tokens=preset.max_text_tokens, sampling=SamplingSettings.of(cfg), seed=cfg.seed,
            fps=preset.fps,
            use_gpu=use_gpu, what="reference-vs-policy samples", timeout_s=cfg.sample_timeout_s)
        samples = [p for p in write_files(out / "samples", files) if p.suffix == ".mp4"]
        tracker.log_artifact(out / "samples", "samples")

    summary = {
        "pairs_used": n_pairs,
        "pairs_per_worker": per_worker,
        "ties": loaded.ties,
        "other_dimension": loaded.other_dimension,
        "rejects": len(rejects),
        "rejects_csv": str(rejects_path),
        "steps": state["step"],
        "final_metrics": metrics,
        "checkpoint": str(final),
        "ray_checkpoint": result.checkpoint.path,
        "samples": [str(s) for s in samples],
        "samples_worker": samples_worker,  # where they were sampled: pid, node, gpu_ids, device
        "resumed_mlflow_run": job.resumed,
        "data_stats": counts,
        # seconds from the job's start: Ray up, data ready (key rows split), first optimizer step
        "startup_s": {**job.startup, "first_step": metrics.get("startup/first_step_s")},
    }
    return job.complete(summary)
