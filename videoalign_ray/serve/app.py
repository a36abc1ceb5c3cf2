"""The Ray Serve reward application: one deployment, two ways in (DeploymentHandle and HTTP), one code path.

    handle.score.remote(prompt=..., frames=uint8 (T,H,W,3) | path=...)  -> {VQ, MQ, TA, Overall, model}
    handle.guide.remote(latents, t, prompt_embeds, weights)             -> Flow-NRG gradient (B,C,F,h,w)
    POST /score   multipart (file=<video>, prompt=...) or JSON {"path": ..., "prompt": ...}
    GET  /healthz

Every score goes through ``_score_batch`` (``@serve.batch``), so concurrent requests share a forward pass; an
item that fails inside a batch fails only its own request. ``reconfigure`` (Serve ``user_config``) changes the
batch size, the batch wait and the checkpoint without a restart; a checkpoint that does not load is refused
and the old model keeps serving (the error shows in ``/healthz`` and the logs).

Hostile input is normal input here (see :class:`ServiceLimits`): bodies are size-capped and time-limited while
they stream, uploads go through the decoder's demuxer allow-list and :class:`DecodeLimits` before any frame
is allocated, prompts are plain text (special-token strings never become control tokens) with a token cap,
request paths resolve inside the data roots (relative ones against the roots), each client address has a cap
on requests in flight, and every refusal is a 4xx whose message names no server path.

(No ``from __future__ import annotations`` here: FastAPI must see the real ``Request`` annotation.)
"""


import asyncio
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import AsyncGenerator
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.formparsers import MultiPartException, MultiPartParser

from videoalign_ray.data.video import VideoDecodeError, VideoLimitError
from videoalign_ray.serve.guard import RequestError, ServiceLimits, public_message, resolve_inside

log = logging.getLogger(__name__)

_DOCS = os.environ.get("VIDEOALIGN_SERVE_DOCS") == "1"  # set by build_app(expose_docs=True) for the replicas
api = FastAPI(title="videoalign-ray reward", docs_url="/docs" if _DOCS else None, redoc_url=None,
              openapi_url="/openapi.json" if _DOCS else None)

@serve.deployment(name="VideoReward", max_ongoing_requests=256, health_check_period_s=10)
@serve.ingress(api)
class RewardDeployment:
    """A replica holding one VideoReward scorer (and optionally a latent reward model for ``guide``).

    ``settings``: ``checkpoint``, ``latent_reward`` (or None), ``data_roots`` (list of folders), ``device``,
    and the :class:`ServiceLimits` fields (``max_upload_bytes``, ``body_timeout_s``, ``max_prompt_tokens``,
    ``max_requests_per_client``, ``decode``). ``user_config``: ``max_batch_size``, ``batch_wait_timeout_s``,
    optionally ``checkpoint``.
    """

    def __init__(self, settings: dict):
        from videoalign_ray.serve.scorer import RewardScorer

        self.settings = dict(settings)
        self.scorer = RewardScorer(settings["checkpoint"], settings.get("latent_reward"), settings.get("device", "auto"))
        self.roots = [str(r) for r in settings.get("data_roots", [])]
        self.limits = ServiceLimits.from_settings(settings)
        self.counts: Counter = Counter()
        self.in_flight: Counter = Counter()
        self.reconfigure_error: str | None = None
        self.decode_slots = asyncio.Semaphore(self.limits.max_concurrent_decodes)
        self.upload_dir = tempfile.mkdtemp(prefix="videoreward-uploads-")  # 0700, this replica's own

    def __del__(self):
        shutil.rmtree(getattr(self, "upload_dir", ""), ignore_errors=True)

    def reconfigure(self, user_config: dict) -> None:
        """Serve calls this at start and on every ``user_config`` change (no replica restart).

        A new checkpoint is loaded completely before it replaces the current model; when anything in the new
        config is invalid the replica keeps its current settings and model, logs the error and reports it in
        ``/healthz`` (``reconfigure_error``) instead of failing the deployment.
        """
        from videoalign_ray.serve.scorer import RewardScorer

        try:
            batch, wait = int(user_config.get("max_batch_size", 8)), float(user_config.get("batch_wait_timeout_s", 0.01))
            if batch < 1 or wait < 0:
                raise ValueError(f"max_batch_size must be >= 1 and batch_wait_timeout_s >= 0, got {batch}, {wait}")
            scorer = self.scorer
            ckpt = user_config.get("checkpoint")
            if ckpt and str(Path(ckpt).resolve()) != self.scorer.checkpoint:
                scorer = RewardScorer(ckpt, self.settings.get("latent_reward"), self.settings.get("device", "auto"))
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old model serving
            log.error("reconfigure refused, still serving %s: %s: %s", self.scorer.model_id, type(exc).__name__, exc)
            self.reconfigure_error = public_message(f"{type(exc).__name__}: {exc}")
            self.counts["reconfigure_failed"] += 1
            return
        self._score_batch.set_max_batch_size(batch)
        self._score_batch.set_batch_wait_timeout_s(wait)
        self.scorer, self.reconfigure_error = scorer, None

    def check_health(self) -> None:
        """Serve's health check (runs on the replica's event loop, so it must stay cheap: no forward pass)."""
        if self.scorer is None or self.scorer.model is None:
            raise RuntimeError("reward model not loaded")

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _score_batch(self, items: list[tuple[np.ndarray, str]]) -> list[dict | RequestError]:
        return await self._score_items(items)

    async def _score_items(self, items: list[tuple[np.ndarray, str]]) -> list[dict | RequestError]:
        """One forward pass; when it fails, each item alone, so only the failing item gets its error (Serve
        sets every returned element as its caller's result: the error is raised by ``score``)."""
        scorer = self.scorer
        try:
            scores = await asyncio.to_thread(scorer.score, [f for f, _ in items], [p for _, p in items])
        except Exception:  # noqa: BLE001 - find the item that failed; the others still get their scores
            if len(items) == 1:
                log.exception("scoring failed for one request")
                return [RequestError(422, "this input could not be scored")]
            return [r for item in items for r in await self._score_items([item])]
        return [{**s, "model": scorer.model_id, "batch_size": len(items)} for s in scores]

    async def score(self, prompt: str, frames: np.ndarray | None = None, path: str | None = None) -> dict:
        """Handle entry: scores of one video (``frames`` uint8 ``(T, H, W, 3)`` or a ``path`` inside the roots).

        Raises:
            RequestError: a missing, invalid or over-long prompt, neither or both inputs, a bad path, a video
                over the limits (413) or undecodable (422).
        """
        self._check_prompt(prompt)
        if (frames is None) == (path is None):
            raise self._reject(422, "give exactly one of frames or path")
        if path is not None:
            if not isinstance(path, str):
                raise self._reject(422, "path must be a string")
            try:
                resolved = resolve_inside(path, self.roots)
            except RequestError as exc:
                raise self._reject(exc.status, exc.message) from None
            video = await self._decode(resolved, path)
        else:
            try:  # resize off the event loop, so requests keep arriving into the batch queue meanwhile
                video = await asyncio.to_thread(self._prepare, frames)
            except VideoLimitError as exc:
                raise self._reject(413, public_message(f"video over the service limits: {exc}")) from None
            except (VideoDecodeError, ValueError) as exc:
                raise self._reject(422, public_message(f"undecodable video: {exc}")) from None
        return await self._score_video(video, prompt)

    async def _decode(self, path: Path | str, shown: str) -> np.ndarray:
        """Frames of a video file for the model (at most ``max_concurrent_decodes`` at once per replica).

        Raises:
            RequestError: 413 over the decode limits, 422 undecodable; messages show ``shown`` for the path.
        """
        names = {str(path): shown}
        try:
            async with self.decode_slots:
                return await asyncio.to_thread(self.scorer.decode, path, self.limits.decode)
        except VideoLimitError as exc:
            raise self._reject(413, public_message(f"video over the service limits: {exc}", names)) from None
        except VideoDecodeError as exc:
            raise self._reject(422, public_message(f"undecodable video: {exc}", names)) from None

    async def _score_video(self, video: np.ndarray, prompt: str) -> dict:
        """Scores of frames already prepared for the model and a checked prompt, through the batch."""
        result = await self._score_batch((video, prompt))
        if isinstance(result, RequestError):
            raise self._reject(result.status, result.message)
        self.counts["scored"] += 1
        return result

    def _check_prompt(self, prompt) -> None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise self._reject(422, "missing prompt")
        cap = self.limits.max_prompt_tokens
        if len(prompt) > 32 * cap:
            raise self._reject(422, f"prompt of {len(prompt)} characters is over the limit ({cap} tokens)")
        try:
            n = self.scorer.prompt_tokens(prompt)
        except ValueError as exc:
            raise self._reject(422, str(exc)) from None
        if n > cap:
            raise self._reject(422, f"prompt of {n} tokens is over the limit of {cap} (max_prompt_tokens)")

    def _prepare(self, frames) -> np.ndarray:
        lim = self.limits.decode
        frames = np.asarray(frames)
        if frames.ndim == 4 and (frames.shape[0] > lim.max_sampled_frames
                                 or frames.shape[1] * frames.shape[2] > lim.max_frame_pixels):
            raise VideoLimitError(f"frames of shape {frames.shape} are over {lim.max_sampled_frames} frames or "
                                  f"{lim.max_frame_pixels} pixels per frame")
        return self.scorer.prepare(frames)

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
                "reconfigure_error": self.reconfigure_error, "counts": dict(self.counts)}

    @api.post("/score")
    async def http_score(self, request: Request):
        client = request.client.host if request.client else "unknown"
        if self.in_flight[client] >= self.limits.max_requests_per_client:
            self.counts["rejected_429"] += 1
            return JSONResponse({"error": f"too many requests in flight from this client (limit "
                                          f"{self.limits.max_requests_per_client})"}, status_code=429)
        self.in_flight[client] += 1
        upload = None
        try:
            prompt, upload, path = await self._parse(request)
            if upload is not None:  # the prompt was checked before the upload was stored
                result = await self._score_video(await self._decode(upload, "upload"), prompt)
            else:
                result = await self.score(prompt, path=path)
        except RequestError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        finally:
            self.in_flight[client] -= 1
            if not self.in_flight[client]:
                del self.in_flight[client]
            if upload is not None:
                Path(upload).unlink(missing_ok=True)
        return {k: v for k, v in result.items() if k != "batch_size"}

    async def _body(self, request: Request, limit: int) -> AsyncGenerator[bytes, None]:
        """The body as it streams in: 413 past ``limit`` bytes, 408 when it takes over ``body_timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout_s
        chunks = request.stream().__aiter__()
        total = 0
        while True:
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), max(0.0, deadline - loop.time()))
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise self._reject(408, f"request body not received within {self.limits.body_timeout_s} s") from None
            total += len(chunk)
            if total > limit:
                raise self._reject(413, f"body over the {limit}-byte limit")
            yield chunk

    async def _parse(self, request: Request) -> tuple[str, str | None, str | None]:
        """``(prompt, uploaded file path or None, request path or None)``."""
        from starlette.requests import ClientDisconnect

        length = request.headers.get("content-length", "")
        ctype = request.headers.get("content-type", "")
        multipart = ctype.startswith("multipart/form-data")
        limit = self.limits.max_upload_bytes if multipart else self.limits.max_json_bytes
        if length.isdigit() and int(length) > limit:
            raise self._reject(413, f"body of {int(length)} bytes is over the {limit}-byte limit")
        try:
            if multipart:
                return await self._parse_multipart(request, limit)
            body = b"".join([c async for c in self._body(request, limit)])
        except ClientDisconnect:
            raise self._reject(400, "client disconnected before the body was complete") from None
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, a 5000-digit integer, deep nesting
            raise self._reject(400, f"malformed JSON ({type(exc).__name__})") from None
        if not isinstance(payload, dict):
            raise self._reject(400, "JSON body must be an object with 'prompt' and 'path'")
        if not isinstance(payload.get("path"), str):
            raise self._reject(422, "JSON request needs 'path' (a video inside the data roots) or use a multipart upload")
        return payload.get("prompt"), None, payload["path"]

    async def _parse_multipart(self, request: Request, limit: int) -> tuple[str, str, None]:
        parser = MultiPartParser(request.headers, self._body(request, limit), max_files=1, max_fields=2,
                                 max_part_size=64 << 10)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise self._reject(400, f"malformed multipart body: {exc.message}") from None
        try:
            upload, prompt = form.get("file"), form.get("prompt")
            if upload is None or isinstance(upload, str):
                raise self._reject(422, "multipart request needs a 'file' part with the video")
            self._check_prompt(prompt)
            fd, name = tempfile.mkstemp(suffix=".video", dir=self.upload_dir)
            with os.fdopen(fd, "wb") as out:
                await asyncio.to_thread(shutil.copyfileobj, upload.file, out)
            return prompt, name, None
        finally:
            await form.close()


def build_app(settings: dict, *, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.01,
              max_ongoing_requests: int = 256, autoscaling: dict | None = None, num_replicas: int | None = None,
              num_cpus: float = 1.0, num_gpus: float = 0.0, expose_docs: bool = False, checkpoint: str | None = None):
    """The bound Serve application (``serve.run(build_app(...), name=...)``).

    ``autoscaling``: Serve's ``autoscaling_config`` (min/max replicas, target_ongoing_requests, ...); when
    None, ``num_replicas`` fixed replicas (default 1). Re-running with only a new ``user_config`` (batch size,
    batch wait, checkpoint) updates the running replicas through ``reconfigure`` instead of replacing them.
    ``max_ongoing_requests`` is high on purpose: a request waiting for its body or a batch costs a coroutine,
    and the per-client cap and body timeout bound what slow clients hold. ``expose_docs`` turns on ``/docs``
    and ``/openapi.json`` (off by default). ``checkpoint`` goes into ``user_config``: re-running with a new one
    hot-swaps the model in place (a checkpoint that does not load is refused and the old one keeps serving).
    """
    actor_options = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    if expose_docs:
        actor_options["runtime_env"] = {"env_vars": {"VIDEOALIGN_SERVE_DOCS": "1"}}
    options = dict(max_ongoing_requests=max_ongoing_requests, ray_actor_options=actor_options,
                   user_config={"max_batch_size": max_batch_size, "batch_wait_timeout_s": batch_wait_timeout_s,
                                **({"checkpoint": checkpoint} if checkpoint else {})})
    if autoscaling:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = num_replicas or 1
    return RewardDeployment.options(**options).bind(settings)


def app_builder(args: dict):
    """Entry for ``serve run`` / ``serve deploy`` config files (``import_path: videoalign_ray.serve.app:app_builder``).

    ``args``: ``checkpoint`` (required unless ``allow_untrained: true``, which serves an untrained tiny
    checkpoint under ``outputs/serve_reward`` for smoke tests), ``latent_reward``, ``data_roots`` (default:
    the current folder), ``max_upload_mb``, ``body_timeout_s``, ``max_prompt_tokens``,
    ``max_requests_per_client``, ``decode`` (DecodeLimits fields).

    Raises:
        ValueError: no checkpoint and ``allow_untrained`` not set, or a checkpoint folder without
            reward_config.json or model_config.json (so a bad ``serve deploy`` fails before it touches the running replicas).
    """
    from videoalign_ray.serve.scorer import make_untrained_checkpoint

    if not args.get("checkpoint") and not args.get("allow_untrained"):
        raise ValueError("videoreward app: args.checkpoint is required (a VideoReward checkpoint folder); set "
                         "args.allow_untrained: true to serve an untrained tiny model for smoke tests")
    from videoalign_ray.reward.checkpoint import is_reward_checkpoint

    if args.get("checkpoint") and not is_reward_checkpoint(args["checkpoint"]):
        raise ValueError(f"videoreward app: args.checkpoint {args['checkpoint']} is not a VideoReward checkpoint "
                         "(no reward_config.json or model_config.json)")
    ckpt = args.get("checkpoint") or str(make_untrained_checkpoint(Path("outputs/serve_reward/untrained").resolve()))
    settings = {"checkpoint": ckpt, "latent_reward": args.get("latent_reward"),
                "data_roots": args.get("data_roots") or [str(Path.cwd())],
                "max_upload_bytes": int(float(args.get("max_upload_mb", 64)) * (1 << 20)),
                "device": args.get("device", "auto"),
                **{k: args[k] for k in ("body_timeout_s", "max_prompt_tokens", "max_requests_per_client",
                                        "max_concurrent_decodes", "decode")
                   if args.get(k) is not None}}
    return RewardDeployment.bind(settings)
