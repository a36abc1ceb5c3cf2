"""The config sections several jobs share (mixins of their flat pydantic models, ``config.JobConfig``):
where a job writes, its preference data, its generator, how it samples, how it trains; and the per-dimension
weights type."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from videoalign_ray.config import JobConfig
from videoalign_ray.errors import ConfigError


class RuntimeSection(JobConfig):
    """Where a job writes, how it is seeded and tracked."""

    output_dir: str = Field("outputs/run", description="Folder for checkpoints, caches, rejects and the MLflow store; "
                            "or a URI (s3://bucket/run): the job works in a local mirror pushed there at the end, "
                            "cache and checkpoints go to <URI>/cache and <URI>/ray_results directly.")
    run_name: str | None = Field(None, description="Name of the run: the MLflow run's name and, in training jobs, "
                                 "the Ray Train run's (its checkpoints folder); default: the output folder's name.")
    seed: int = Field(0, description="Seed for model init, data order, noise and timesteps.")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow store; default sqlite:///<output_dir>/mlflow.db (MLFLOW_TRACKING_URI overrides)."
    )
    mlflow_experiment: str = Field("videoalign-ray", description="MLflow experiment name.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of videoalign_ray's loggers (stderr; other libraries log WARNING and up).")
    resume: bool = Field(False, description="Continue the run in --output-dir even though its config.yaml differs "
                         "in a setting that changes results (the differences are logged); without it such a rerun "
                         "stops with the list of changed keys.")
    overwrite: bool = Field(False, description="Start over in --output-dir: remove the earlier run there (checkpoints, "
                            "final/, samples, tables) and start a new MLflow run; the latent cache and the MLflow store "
                            "(with the earlier run) are kept. Checkpoints under a "
                            "--storage-path elsewhere are not touched: give those a new --run-name.")

    @model_validator(mode="after")
    def _resume_or_overwrite(self):
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the earlier run or start over")
        return self


def parse_weights(text: str) -> tuple[float, float, float]:
    """``"1,1,1"`` -> ``(1.0, 1.0, 1.0)``: per-dimension weights (VQ, MQ, TA), non-negative, positive sum.

    Raises:
        ConfigError: not three such numbers (the message quotes the value).
    """
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"weights must be three comma-separated numbers (VQ,MQ,TA), got {text!r}") from None
    if len(values) != 3 or any(not (v >= 0) for v in values) or sum(values) <= 0 or sum(values) == float("inf"):
        raise ConfigError(f"weights must be three non-negative numbers with a positive sum, got {text!r}")
    return values  # type: ignore[return-value]


def _check_weights(text: str) -> str:
    try:
        parse_weights(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return text


Weights = Annotated[str, AfterValidator(_check_weights)]
"""A config field holding ``"VQ,MQ,TA"`` weights, validated when the config is (see :func:`parse_weights`)."""


class DataSection(JobConfig):
    """Preference data and its validation."""

    data: str | None = Field(
        None, description="Preference table (CSV/Parquet/JSONL); default: the built-in synthetic dataset."
    )
    dimension: Literal["VQ", "MQ", "TA", "overall"] = Field(
        "overall", description="Which label decides chosen vs rejected (overall = majority of VQ/MQ/TA)."
    )
    max_reject_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="Fail when more than this fraction of rows is rejected."
    )
    min_decoded_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="Reject a video whose decodable frames are fewer than this fraction of "
        "the frames its container claims (truncated files)."
    )
    video_backend: Literal["auto", "pyav"] = Field(
        "auto", description="auto: decord where it is safe, PyAV otherwise; pyav: always PyAV."
    )
    cache_dir: str | None = Field(
        None, description="Latent / frame cache: a path or a URI (s3://bucket/prefix through pyarrow; AWS_* "
        "variables, AWS_ENDPOINT_URL for MinIO); default <output_dir>/cache. Shared storage on clusters.")
    clip_start: Literal["center", "start"] = Field(
        "center", description="Where a training clip's window (the model's frames at its fps: Wan 81 at 16 fps) "
        "sits in a longer clip: center (away from fades and cuts at the ends) or start.")
    short_clips: Literal["trim", "reject"] = Field(
        "trim", description="A clip shorter than the window: trim to the longest 4k+1 frames it holds (at least "
        "--min-clip-frames; a micro-batch trains on its shortest clip's length) or reject it. Never padded.")
    min_clip_frames: int | None = Field(None, ge=1, description="Fewest frames a trimmed clip keeps; default half the window.")
    encoder_actors: int | None = Field(
        None, ge=1, description="VAE encoder actors (Ray Data actor pool); default one per GPU of the cluster, 1 "
        "without GPUs. Decode tasks spread over all nodes either way.")


class ModelSection(JobConfig):
    """Which generator to load."""

    preset: Literal["tiny", "tiny-world", "wan2.1-1.3b"] = Field(
        "tiny-world",
        description="tiny: random init (CPU); tiny-world: tiny pre-trained on the synthetic world (committed asset, "
        "see jobs/pretrain_base.py); wan2.1-1.3b: a real Wan2.1-T2V-1.3B folder (--model-path).",
    )
    model_path: str | None = Field(None, description="Diffusers-format model folder (required for the real preset).")
    num_frames: int | None = Field(None, gt=0, description="Frames per video (training clips and samples); default from the preset.")
    height: int | None = Field(None, gt=0, description="Pixels; default from the preset.")
    width: int | None = Field(None, gt=0, description="Pixels; default from the preset.")


class WorldSection(JobConfig):
    """Which synthetic world a job's default prompts, ground truth and tiny-world base come from."""

    world: Literal["classic", "large"] = Field(
        "classic", description="Synthetic world grammar: classic (32 prompts, 8 held out) or large (128 prompts, "
        "48 held out: narrower intervals over held-out prompts); picks the world's prompts, ground-truth scorers "
        "and the tiny-world base pre-trained on it.")


class SamplingSection(JobConfig):
    """How a job samples videos (``flow.sampling.SamplingSettings.of``): the same flags in every job that samples."""

    sampler: Literal["auto", "euler", "unipc"] = Field(
        "auto", description="auto: the model folder's scheduler (Wan2.1: UniPC with flow sigmas, as WanPipeline), "
        "Euler for the tiny presets; euler; unipc. Flow-NRG guidance always samples with Euler.")
    sample_steps: int = Field(20, ge=1, description="Denoising steps per video.")
    sample_shift: float | None = Field(
        None, gt=0, description="Flow shift; default: the scheduler's own (Wan2.1 480p: 3.0), 1.0 with Euler.")
    cfg_scale: float = Field(1.0, ge=1.0, description="Classifier-free guidance scale (1 = off; WanPipeline: 5.0).")
    negative_prompt: str = Field(
        "", description="CFG's negative prompt ('' as WanPipeline's default); 'wan': Wan2.1's own negative prompt.")


class RewardSection(JobConfig):
    """Where an online job's rewards come from (``online.rewards.RewardSource``)."""

    reward: Literal["auto", "ground-truth", "served"] = Field(
        "auto", description="ground-truth: the world's pixel scorers (oracle); served: the Serve reward app; "
        "auto: served when --reward-checkpoint or --reward-endpoint is given.")
    reward_checkpoint: str | None = Field(None, description="VideoReward checkpoint the job deploys as a Serve app.")
    reward_endpoint: str | None = Field(None, description="Name of an already running Serve reward app.")
    reward_weights: Weights = Field("1,1,1", description="Per-dimension weights (VQ,MQ,TA) of the reward.")
    reward_timeout_s: float = Field(120.0, gt=0, description="Seconds per reward call before it is retried.")
    reward_attempts: int = Field(3, ge=1, description="Attempts per reward call before the round fails.")
    reward_gpu_share: float = Field(0.0, ge=0, lt=1, description="Colocated workers, served reward: the share of a "
                                    "GPU each reward replica takes beside a worker (each worker holds 1 - share).")


class TrainSection(JobConfig):
    """Ray Train + DeepSpeed settings shared by the training jobs."""

    num_workers: int = Field(2, ge=1, description="Ray Train workers (data-parallel ranks).")
    use_gpu: bool | None = Field(None, description="Default: True when the cluster has GPUs.")
    cpus_per_worker: int | None = Field(
        None, ge=1, description="CPUs each Ray Train worker reserves; its torch runs that many threads. Default: "
        "on CPU the cluster's free CPUs / num_workers, on GPU 1 (the other CPUs stay for data tasks).")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU.")
    max_steps: int = Field(30, ge=0, description="Optimizer steps in total (a resumed run continues up to this).")
    batch_size: int = Field(2, ge=1, description="Pairs per worker per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps (set from --global-batch when given).")
    global_batch: int | None = Field(
        None, ge=1, description="Pairs per optimizer step over all workers: grad_accum = global_batch / (batch_size "
        "x num_workers), which must divide; the same value on any GPU count.")
    gradient_checkpointing: bool | None = Field(
        None, description="Recompute each transformer block in the backward pass (diffusers / transformers "
        "checkpointing): ~10x less activation memory for ~30% more compute. Default: on for real models, off for tiny.")
    lr: float | None = Field(None, gt=0, description="Learning rate; default from the preset (paper: 5e-6).")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up steps.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="After warm-up: constant lr, or cosine decay to min_lr_ratio * lr at max_steps.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final lr / lr of the cosine schedule.")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="Gradient-norm clip; 0 disables.")
    finetune: Literal["lora", "full"] = Field("lora", description="LoRA (reference = adapters off) or full.")
    lora_rank: int | None = Field(None, gt=0, description="Default from the preset (paper: 64).")
    lora_alpha: float | None = Field(None, gt=0, description="Default 2 * rank (paper: 128).")
    checkpoint_every: int = Field(10, ge=1, description="Steps between checkpoints (each blocks on ray.train.report).")
    num_to_keep: int = Field(2, ge=1, description="Checkpoints kept.")
    log_every: int = Field(1, ge=1, description="Steps between metric logs.")
    max_failures: int = Field(3, ge=-1, description="Worker-group restarts allowed (FailureConfig).")
    storage_path: str | None = Field(
        None, description="Where Ray Train writes checkpoints and its run snapshot, under <storage_path>/<run "
        "name>: a path every node sees or a URI (s3://bucket/prefix, gs://...; credentials from the usual "
        "variables). Default <output_dir>/ray_results. A rerun with the same value and run name resumes.")
    fit_timeout_s: float = Field(
        172800.0, gt=0, description="Seconds the Ray Train run may take in all (worker start, restarts, every "
        "step) before the job fails naming it; a rerun resumes from the last checkpoint.")
    fail_at_step: int | None = Field(
        None, description="Fault injection for tests: rank 1 (or 0 with one worker) SIGKILLs itself once at this step.",
        json_schema_extra={"test_hook": True})
