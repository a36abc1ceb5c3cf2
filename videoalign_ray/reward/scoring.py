"""Batch scoring with Ray Data: (video path, prompt) rows -> normalised VQ / MQ / TA / Overall.

``RewardScorer`` is a ``map_batches`` actor class: it loads the checkpoint once per actor, decodes each
video with the checkpoint's frame settings (fps, pixel budget) and scores a batch in one forward pass.
A video that fails to decode gets NaN scores and its reason in ``error`` (never dropped); ``error`` is None for
a scored video.
"""

from __future__ import annotations

import numpy as np
import ray

from videoalign_ray.data.schema import DIMENSIONS
from videoalign_ray.data.video import VideoDecodeError

SCORE_COLUMNS = ("VQ", "MQ", "TA", "Overall")


class RewardScorer:
    """Ray Data actor: ``{path, prompt}`` batches -> ``{path, prompt, raw_VQ.., VQ, MQ, TA, Overall, error}``."""

    def __init__(self, checkpoint: str):
        import torch

        from videoalign_ray.reward.checkpoint import load_reward_checkpoint, place_for_scoring
        from videoalign_ray.reward.pipeline import FrameSpec
        from videoalign_ray.runtime.placement import worker_device

        self.torch = torch
        self.device = str(worker_device())  # decided in the actor, by what it has
        model, self.proc = load_reward_checkpoint(checkpoint)
        self.model = place_for_scoring(model, self.proc.scheme, self.device)
        self.spec = FrameSpec.of(self.proc.scheme)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from videoalign_ray.reward.pipeline import decode_for_reward

        paths, prompts = [str(p) for p in batch["path"]], [str(p) for p in batch["prompt"]]
        frames, errors = [], []
        for p in paths:
            try:
                frames.append(decode_for_reward(p, self.spec))
                errors.append(None)
            except (VideoDecodeError, OSError, ValueError) as exc:
                frames.append(None)
                errors.append(str(exc))
        ok = [i for i, f in enumerate(frames) if f is not None]
        raw = np.full((len(paths), 3), np.nan, np.float32)
        if ok:
            with self.torch.no_grad():
                inputs = {k: v.to(self.device) for k, v in self.proc([frames[i] for i in ok],
                                                                     [prompts[i] for i in ok]).items()}
                raw[ok] = self.model(**inputs).float().cpu().numpy()
        norm = (raw - self.model.norm_mean.float().cpu().numpy()) / self.model.norm_std.float().cpu().numpy()
        out = {"path": np.array(paths), "prompt": np.array(prompts), "error": np.array(errors, dtype=object)}
        for d, name in enumerate(DIMENSIONS):
            out[f"raw_{name}"] = raw[:, d]
            out[name] = norm[:, d]
        out["Overall"] = norm.sum(axis=1)
        return out


class _Indexed(RewardScorer):
    """:class:`RewardScorer` that passes each row's ``index`` through."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**super().__call__(batch), "index": np.asarray(batch["index"])}


def score_rows(rows: list[dict], checkpoint: str, *, actors: int = 1, batch_size: int = 8,
               use_gpu: bool | None = None) -> list[dict]:
    """Score ``rows`` (``{"path", "prompt"}``) with an actor pool; returns one row per input, in input order
    (``{path, prompt, raw_VQ, raw_MQ, raw_TA, VQ, MQ, TA, Overall, error}``; ``error`` None when scored).
    Each actor holds one GPU with ``use_gpu`` (default: when the cluster has GPUs) and computes on what it
    has (``runtime.placement.worker_device``)."""
    from videoalign_ray.runtime.placement import use_gpu_default

    ds = ray.data.from_items([{"index": i, "path": r["path"], "prompt": r["prompt"]} for i, r in enumerate(rows)])
    scored = ds.map_batches(_Indexed, fn_constructor_kwargs={"checkpoint": str(checkpoint)},
                            batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors),
                            num_gpus=1 if use_gpu_default(use_gpu) else 0)
    # Ray Data keeps no order across actors: each row carries its input position through the pool
    by_index = sorted(scored.take_all(), key=lambda r: int(r["index"]))
    return [{k: v for k, v in r.items() if k != "index"} for r in by_index]
