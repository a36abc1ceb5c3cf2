"""The Ray Serve reward application: one deployment, two ways in (DeploymentHandle and HTTP), one code path.

    handle.score.remote(prompt=..., frames=uint8 (T,H,W,3) | path=...)  -> {VQ, MQ, TA, Overall, model}
    handle.guide.remote(latents, t, prompt_embeds, weights)             -> Flow-NRG gradient (B,C,F,h,w)
    POST /score   multipart (file=<video>, prompt=...) or JSON {"path": ..., "prompt": ...}
    GET  /healthz

Every score goes through ``_score_batch`` (``@serve.batch``), so concurrent requests share a forward pass.
``reconfigure`` (Serve ``user_config``) changes the batch size, the batch wait and the checkpoint without a
restart. Request-supplied paths must resolve inside the configured data roots. Bad requests get a 4xx with
a message and are counted per reason (shown by ``/healthz``).

(No ``from __future__ import annotations`` here: FastAPI must see the real ``Request`` annotation.)
"""


import asyncio
import json
import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from videoalign_ray.data.video import VideoDecodeError

api = FastAPI(title="videoalign-ray reward")


class RequestError(Exception):
    """A request the service refuses: HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(status, message)  # both in args, so the error pickles across processes
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


def resolve_inside(path: str, roots: list[str]) -> Path:
    """``path`` resolved (symlinks followed); it must lie inside one of ``roots``.

    Raises:
        RequestError: 403 outside every root, 404 when it does not exist.
    """
    resolved = Path(path).expanduser().resolve()
    if not any(resolved.is_relative_to(Path(r).expanduser().resolve()) for r in roots):
        raise RequestError(403, f"path {path!r} is outside the configured data roots")
    if not resolved.is_file():
        raise RequestError(404, f"path {path!r} does not exist")
    return resolved


@serve.deployment(name="VideoReward", max_ongoing_requests=32, health_check_period_s=10)
@serve.ingress(api)
class RewardDeployment:
    """A replica holding one VideoReward scorer (and optionally a latent reward model for ``guide``).

    ``settings``: ``checkpoint``, ``latent_reward`` (or None), ``data_roots`` (list of folders),
    ``max_upload_bytes``, ``device``. ``user_config``: ``max_batch_size``, ``batch_wait_timeout_s``,
    optionally ``checkpoint``.
    """

    def __init__(self, settings: dict):
        from videoalign_ray.serve.scorer import RewardScorer

        self.settings = dict(settings)
        self.scorer = RewardScorer(settings["checkpoint"], settings.get("latent_reward"), settings.get("device", "cpu"))
        self.roots = [str(r) for r in settings.get("data_roots", [])]
        self.max_upload = int(settings.get("max_upload_bytes", 64 << 20))
        self.counts: Counter = Counter()

    def reconfigure(self, user_config: dict) -> None:
        """Serve calls this at start and on every ``user_config`` change (no replica restart)."""
        from videoalign_ray.serve.scorer import RewardScorer

        self._score_batch.set_max_batch_size(int(user_config.get("max_batch_size", 8)))
        self._score_batch.set_batch_wait_timeout_s(float(user_config.get("batch_wait_timeout_s", 0.01)))
        ckpt = user_config.get("checkpoint")
        if ckpt and str(Path(ckpt).resolve()) != self.scorer.checkpoint:
            self.scorer = RewardScorer(ckpt, self.settings.get("latent_reward"), self.settings.get("device", "cpu"))

    def check_health(self) -> None:
        """Serve's health check (runs on the replica's event loop, so it must stay cheap: no forward pass)."""
        if self.scorer is None or self.scorer.model is None:
            raise RuntimeError("reward model not loaded")

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _score_batch(self, items: list[tuple[np.ndarray, str]]) -> list[dict]:
        scores = await asyncio.to_thread(self.scorer.score, [f for f, _ in items], [p for _, p in items])
        return [{**s, "model": self.scorer.model_id, "batch_size": len(items)} for s in scores]

    async def score(self, prompt: str, frames: np.ndarray | None = None, path: str | None = None) -> dict:
        """Handle entry: scores of one video (``frames`` uint8 ``(T, H, W, 3)`` or a ``path`` inside the roots).

        Raises:
            RequestError: a missing prompt, neither or both inputs, a bad path, undecodable video.
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise self._reject(422, "missing prompt")
        if (frames is None) == (path is None):
            raise self._reject(422, "give exactly one of frames or path")
        try:
            if path is not None:
                video = await asyncio.to_thread(self.scorer.decode, resolve_inside(path, self.roots))
            else:
                video = self.scorer.prepare(frames)
        except RequestError as exc:
            raise self._reject(exc.status, exc.message) from None
        except (VideoDecodeError, ValueError) as exc:
            raise self._reject(422, f"undecodable video: {exc}") from None
        self.counts["scored"] += 1
        return await self._score_batch((video, prompt))

    async def guide(self, latents: np.ndarray, t: np.ndarray, prompt_embeds: np.ndarray,
                    weights: np.ndarray) -> np.ndarray:
        """Flow-NRG gradient of ``sum_d weights_d r_d`` for a batch of noisy latents (latent reward model)."""
        return await asyncio.to_thread(self.scorer.guide, latents, t, prompt_embeds, weights)

    def _reject(self, status: int, message: str) -> RequestError:
        self.counts[f"rejected_{status}"] += 1
        return RequestError(status, message)

    # ---- HTTP -------------------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "model": self.scorer.model_id, "latent_reward": self.scorer.latent is not None,
                "counts": dict(self.counts)}

    @api.post("/score")
    async def http_score(self, request: Request):
        try:
            prompt, frames, path = await self._parse(request)
            result = await self.score(prompt, frames=frames, path=path)
        except RequestError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        return {k: v for k, v in result.items() if k != "batch_size"}

    async def _parse(self, request: Request) -> tuple[str, np.ndarray | None, str | None]:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_upload:
            raise self._reject(413, f"payload of {int(length)} bytes is over the {self.max_upload}-byte limit")
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form()  # file parts spool to disk; their size is checked below
            upload, prompt = form.get("file"), form.get("prompt")
            if upload is None or isinstance(upload, str):
                raise self._reject(422, "multipart request needs a 'file' part with the video")
            data = await upload.read()
            if len(data) > self.max_upload:
                raise self._reject(413, f"upload of {len(data)} bytes is over the {self.max_upload}-byte limit")
            if not isinstance(prompt, str) or not prompt.strip():
                raise self._reject(422, "missing prompt")
            frames = await asyncio.to_thread(self._decode_bytes, data, getattr(upload, "filename", "") or "")
            return prompt, frames, None
        body = await request.body()
        if len(body) > self.max_upload:
            raise self._reject(413, f"payload of {len(body)} bytes is over the {self.max_upload}-byte limit")
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise self._reject(400, f"malformed JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise self._reject(400, "JSON body must be an object with 'prompt' and 'path'")
        if not isinstance(payload.get("path"), str):
            raise self._reject(422, "JSON request needs 'path' (a video inside the data roots) or use a multipart upload")
        return payload.get("prompt"), None, payload["path"]

    def _decode_bytes(self, data: bytes, filename: str) -> np.ndarray:
        suffix = Path(filename).suffix
        suffix = suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ".mp4"  # the decoder may use it
        with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
            tmp.write(data)
            tmp.flush()
            try:
                return self.scorer.decode(tmp.name)
            except VideoDecodeError as exc:
                raise self._reject(422, f"undecodable video: {str(exc).replace(tmp.name, filename or 'upload')}") from None


def build_app(settings: dict, *, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.01,
              max_ongoing_requests: int = 32, autoscaling: dict | None = None, num_replicas: int | None = None,
              num_cpus: float = 1.0, num_gpus: float = 0.0):
    """The bound Serve application (``serve.run(build_app(...), name=...)``).

    ``autoscaling``: Serve's ``autoscaling_config`` (min/max replicas, target_ongoing_requests, ...); when
    None, ``num_replicas`` fixed replicas (default 1). Re-running with only a new ``user_config`` (batch size,
    batch wait, checkpoint) updates the running replicas through ``reconfigure`` instead of replacing them.
    """
    options = dict(max_ongoing_requests=max_ongoing_requests,
                   ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
                   user_config={"max_batch_size": max_batch_size, "batch_wait_timeout_s": batch_wait_timeout_s})
    if autoscaling:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = num_replicas or 1
    return RewardDeployment.options(**options).bind(settings)


def app_builder(args: dict):
    """Entry for ``serve run`` / ``serve deploy`` config files (``import_path: videoalign_ray.serve.app:app_builder``).

    ``args``: ``checkpoint`` (required unless ``allow_untrained: true``, which serves an untrained tiny
    checkpoint under ``outputs/serve_reward`` for smoke tests), ``latent_reward``, ``data_roots`` (default:
    the current folder), ``max_upload_mb``.

    Raises:
        ValueError: no checkpoint and ``allow_untrained`` not set.
    """
    from videoalign_ray.serve.scorer import make_untrained_checkpoint

    if not args.get("checkpoint") and not args.get("allow_untrained"):
        raise ValueError("videoreward app: args.checkpoint is required (a VideoReward checkpoint folder); set "
                         "args.allow_untrained: true to serve an untrained tiny model for smoke tests")
    ckpt = args.get("checkpoint") or str(make_untrained_checkpoint(Path("outputs/serve_reward/untrained").resolve()))
    settings = {"checkpoint": ckpt, "latent_reward": args.get("latent_reward"),
                "data_roots": args.get("data_roots") or [str(Path.cwd())],
                "max_upload_bytes": int(float(args.get("max_upload_mb", 64)) * (1 << 20)),
                "device": args.get("device", "cpu")}
    return RewardDeployment.bind(settings)
