"""Ray Data for VideoReward: preference rows -> decoded, resized frames of both videos -> training rows.

Videos are sampled at ``fps`` (docs/algorithms.md section 4: 2 fps, even count clamped to [4, 768]) and resized
to the pixel budget in multiples of 28. Rows keep ragged uint8 frames ``(T, H, W, 3)`` per video, the
caption and the per-dimension labels ``(3,)`` int64 (+1 A better, -1 B better, 0 tie, -100 unlabelled).
A video that fails to decode rejects its row with the decoder's reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ray

from videoalign_ray.data.schema import DIMENSIONS, PreferencePair, Reject
from videoalign_ray.data.transforms import resize_to_budget
from videoalign_ray.data.video import DecodeLimits, VideoDecodeError, expand_frames, load_video

INVALID = -100


@dataclass(frozen=True)
class FrameSpec:
    """Frame sampling and the pixel budget (pixels per frame, multiples of ``factor``)."""

    fps: float = 2.0
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 448 * 448
    max_frames: int = 768
    factor: int = 28


def decode_for_reward(path: str, spec: FrameSpec, limits: DecodeLimits | None = None) -> np.ndarray:
    """uint8 ``(T, H, W, 3)``: sampled at ``spec.fps`` and resized to the budget (distinct frames are resized
    once, then repeated).

    Raises:
        VideoDecodeError: unreadable, or over ``limits`` (VideoLimitError).
    """
    v = load_video(path, target_fps=spec.fps, max_frames=spec.max_frames, limits=limits)
    small = resize_to_budget(v.distinct, sar=v.info.sar, factor=spec.factor, min_pixels=spec.min_pixels,
                             max_pixels=spec.max_pixels)
    return np.ascontiguousarray(expand_frames(small, v.inverse))


def labels_of(pair: PreferencePair) -> np.ndarray:
    return np.array([INVALID if pair.labels.get(d) is None else pair.labels[d] for d in DIMENSIONS], np.int64)


def _decode_pair(row: dict, spec: FrameSpec) -> dict:
    out = dict(row)
    out["error"], out["error_column"] = "", ""
    for col in ("a", "b"):
        try:
            out[f"frames_{col}"] = decode_for_reward(row[f"path_{col}"], spec)
        except (VideoDecodeError, OSError, ValueError) as exc:
            out[f"frames_{col}"] = np.zeros((0, spec.factor, spec.factor, 3), np.uint8)
            out["error"], out["error_column"] = str(exc), ("chosen" if col == "a" else "rejected")
    return out


def decode_pairs(pairs: list[PreferencePair], spec: FrameSpec):
    """Decode both videos of every pair with Ray Data tasks.

    Returns ``(dataset, rejects)``: the materialized rows ``{frames_a, frames_b, caption, labels}`` of the
    pairs that decoded, ordered as ``pairs``, and a Reject per failed pair.
    """
    items = [{"idx": i, "row": p.row, "path_a": p.chosen, "path_b": p.rejected, "caption": p.prompt,
              "labels": labels_of(p)} for i, p in enumerate(pairs)]
    ds = (ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 64)))
          .map(_decode_pair, fn_kwargs={"spec": spec}).materialize())
    meta = ds.select_columns(["idx", "row", "path_a", "path_b", "error", "error_column"]).take_all()
    rejects = [Reject(m["row"], m["error_column"], m["path_a"] if m["error_column"] == "chosen" else m["path_b"],
                      m["error"]) for m in meta if m["error"]]
    good = ds.filter(lambda r: r["error"] == "").select_columns(["idx", "frames_a", "frames_b", "caption", "labels"])
    return good.sort("idx").materialize(), rejects
