"""``jobs/serve_reward.py``: deploy the reward app on Ray Serve, print the URL, keep running.

HTTP binds to 127.0.0.1 unless ``--host`` says otherwise; request-supplied paths must lie under
``--data-roots``. Ray's token authentication stays as Ray configures it (on by default in Ray 2.60).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydantic import Field, model_validator

from videoalign_ray.errors import ModelPathError
from videoalign_ray.runtime.job import job_run
from videoalign_ray.sections import RuntimeSection

log = logging.getLogger(__name__)


class ServeRewardConfig(RuntimeSection):
    """Config of ``jobs/serve_reward.py`` (also the knobs of ``cluster/serve_reward.yaml``)."""

    output_dir: str = "outputs/serve_reward"
    reward_checkpoint: str | None = Field(None, description="VideoReward checkpoint folder (required unless --allow-untrained).")
    allow_untrained: bool = Field(False, description="Without --reward-checkpoint, serve an UNTRAINED tiny model (its scores "
                                  "are noise: for smoke tests only).")
    latent_reward: str | None = Field(None, description="Latent reward checkpoint for Flow-NRG guide() calls; "
                                      "several joined by commas guide with their mean reward (an ensemble).")
    data_roots: str = Field(".", description="Comma-separated folders that request paths must resolve inside.")
    host: str = Field("127.0.0.1", description="HTTP bind address (loopback by default).")
    port: int = Field(8000, ge=1, le=65535)
    app_name: str = "videoreward"
    route_prefix: str = "/"
    max_batch_size: int = Field(8, ge=1, description="@serve.batch max batch (reconfigurable).")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="@serve.batch wait for a fuller batch (seconds).")
    max_ongoing_requests: int = Field(256, ge=1, description="Per replica: requests a replica holds at once (waiting "
                                      "for their body or their batch costs a coroutine; keep it well above the batch).")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0, description="Autoscaling target per replica.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica.")
    max_upload_mb: float = Field(64.0, gt=0, description="Upload / body size limit (MiB): 413 above it.")
    body_timeout_s: float = Field(30.0, gt=0, description="Seconds to receive a request body: 408 after.")
    max_prompt_tokens: int = Field(256, ge=1, description="Prompt tokens (as text): 422 above.")
    max_requests_per_client: int = Field(32, ge=1, description="HTTP requests in flight per client address and "
                                         "replica: 429 above (keeps stalled clients from starving others).")
    max_video_seconds: float = Field(300.0, gt=0, description="Longest video a request may send (413 above).")
    max_sampled_frames: int = Field(256, ge=1, description="Most frames sampled from one video (413 above).")
    max_concurrent_decodes: int = Field(2, ge=1, description="Videos a replica decodes at once (bounds memory).")
    expose_docs: bool = Field(False, description="Serve /docs and /openapi.json (off by default).")
    run_seconds: float = Field(0.0, ge=0, description="Stop after this long (0 = until Ctrl-C).")

    @model_validator(mode="after")
    def _checkpoint_or_allow_untrained(self) -> ServeRewardConfig:
        if not self.reward_checkpoint and not self.allow_untrained:
            raise ValueError("no checkpoint: give --reward-checkpoint DIR (a VideoReward checkpoint; jobs/train_reward.py "
                             "writes <output-dir>/final), or --allow-untrained to serve an untrained tiny model for "
                             "smoke tests")
        return self


def deploy(cfg: ServeRewardConfig) -> tuple[object, str]:
    """Start Serve (HTTP on ``host:port``) and run the app; returns ``(DeploymentHandle, base URL)``."""
    from ray import serve

    from videoalign_ray.runtime.hub import resolve_model_location
    from videoalign_ray.runtime.launch import init_ray
    from videoalign_ray.serve.app import build_app
    from videoalign_ray.serve.scorer import make_untrained_checkpoint

    given = str(resolve_model_location(cfg.reward_checkpoint, "--reward-checkpoint")) if cfg.reward_checkpoint else None
    from videoalign_ray.reward.checkpoint import is_reward_checkpoint

    if given and not is_reward_checkpoint(given):
        raise ModelPathError(f"--reward-checkpoint {cfg.reward_checkpoint}: not a VideoReward checkpoint (no "
                             "reward_config.json or model_config.json)")
    init_ray()
    ckpt = given or str(make_untrained_checkpoint(Path(cfg.output_dir).resolve() / "untrained"))
    if not cfg.reward_checkpoint:
        log.warning("--allow-untrained: serving an UNTRAINED tiny VideoReward (%s); its scores are noise", ckpt)
    settings = {"checkpoint": str(Path(ckpt).resolve()), "latent_reward": cfg.latent_reward,
                "data_roots": [str(Path(r.strip()).resolve()) for r in cfg.data_roots.split(",") if r.strip()],
                "max_upload_bytes": int(cfg.max_upload_mb * (1 << 20)), "device": "auto",
                "body_timeout_s": cfg.body_timeout_s, "max_prompt_tokens": cfg.max_prompt_tokens,
                "max_requests_per_client": cfg.max_requests_per_client, "max_concurrent_decodes": cfg.max_concurrent_decodes,
                "decode": {"max_duration_s": cfg.max_video_seconds, "max_sampled_frames": cfg.max_sampled_frames}}
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    autoscaling = {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                   "initial_replicas": max(cfg.min_replicas, 1),
                   "target_ongoing_requests": cfg.target_ongoing_requests}
    app = build_app(settings, max_batch_size=cfg.max_batch_size, batch_wait_timeout_s=cfg.batch_wait_timeout_s,
                    max_ongoing_requests=cfg.max_ongoing_requests, autoscaling=autoscaling, num_cpus=cfg.num_cpus,
                    num_gpus=cfg.num_gpus, expose_docs=cfg.expose_docs)
    handle = serve.run(app, name=cfg.app_name, route_prefix=cfg.route_prefix)
    url = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
    return handle, url


def run_serve_reward(cfg: ServeRewardConfig) -> dict:
    """Deploy, print the URL and example requests, then block (``run_seconds`` or Ctrl-C)."""
    with job_run(cfg, track=False) as job:
        return _run(cfg, job)


def _run(cfg: ServeRewardConfig, job) -> dict:
    from ray import serve

    _, url = deploy(cfg)
    log.info("reward app %r is up: %s/score  (health: %s/healthz)\n"
             "  curl -F prompt='a red circle moving left to right' -F file=@video.mp4 %s/score\n"
             "  curl -H 'content-type: application/json' -d '{\"prompt\": \"...\", \"path\": \"<under %s>\"}' %s/score",
             cfg.app_name, url, url, url, cfg.data_roots, url)
    start = time.monotonic()
    try:
        while cfg.run_seconds == 0 or time.monotonic() - start < cfg.run_seconds:
            time.sleep(min(1.0, cfg.run_seconds or 1.0))
    except KeyboardInterrupt:
        pass
    status = serve.status().applications[cfg.app_name].status
    return job.complete({"url": url, "app": cfg.app_name, "status": str(status),
                         "uptime_s": round(time.monotonic() - start, 1)})
