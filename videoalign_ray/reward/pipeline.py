"""Ray Data for VideoReward: preference rows -> decoded, resized frames (cached) -> training rows.

    distinct videos --map(decode, tasks spread over nodes)--> frame cache (one safetensors file per video)
    good pairs --> small key rows (materialized) --each training worker loads its micro-batches--> rows

Videos are sampled at ``fps`` (docs/algorithms.md section 4: 2 fps, even count clamped to [4, 768]) and resized
to the pixel budget in multiples of 28. Rows keep ragged uint8 frames ``(T, H, W, 3)`` per video, the
caption and the per-dimension labels ``(3,)`` int64 (+1 A better, -1 B better, 0 tie, -100 unlabelled).
A video that fails to decode rejects every row that uses it with the decoder's reason.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import ray

from videoalign_ray.data.cache import KeyRows, TensorCache
from videoalign_ray.data.schema import DIMENSIONS, PreferencePair, Reject
from videoalign_ray.data.transforms import FRAMES_VERSION, resize_to_budget
from videoalign_ray.data.video import DecodeLimits, VideoDecodeError, VideoInfo, expand_frames, load_video
from videoalign_ray.runtime.key_table import write_key_table
from videoalign_ray.runtime.launch import collect_rows, current_node_id

INVALID = -100


@dataclass(frozen=True)
class FrameSpec:
    """Frame sampling and the pixel budget (pixels per frame, multiples of ``factor``): ``fps`` or exactly
    ``num_frames``, the frame ``rule`` and resize ``kernel`` of a scoring scheme
    (:class:`~videoalign_ray.reward.scheme.ScoringScheme`)."""

    fps: float | None = 2.0
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 448 * 448
    max_frames: int = 768
    factor: int = 28
    num_frames: int | None = None
    rule: str = "project"
    kernel: str = "uint8"

    @classmethod
    def of(cls, scheme) -> FrameSpec:
        """The frame spec of a :class:`~videoalign_ray.reward.scheme.ScoringScheme`."""
        return cls(fps=scheme.fps, min_pixels=scheme.min_pixels, max_pixels=scheme.max_pixels,
                   num_frames=scheme.num_frames, rule=scheme.frame_rule, kernel=scheme.resize)


def decode_for_reward(path: str, spec: FrameSpec, limits: DecodeLimits | None = None) -> np.ndarray:
    """uint8 ``(T, H, W, 3)``: sampled at ``spec.fps`` and resized to the budget (distinct frames are resized
    once, then repeated; on the decord path chunk by chunk while the next chunk decodes).

    Raises:
        VideoDecodeError: unreadable, or over ``limits`` (VideoLimitError).
    """
    def resize(frames: np.ndarray, info: VideoInfo) -> np.ndarray:
        return resize_to_budget(frames, sar=info.sar, factor=spec.factor, min_pixels=spec.min_pixels,
                                max_pixels=spec.max_pixels, kernel=spec.kernel)

    v = load_video(path, target_fps=spec.fps, num_frames=spec.num_frames, max_frames=spec.max_frames, limits=limits,
                   transform=resize, frame_rule=spec.rule)
    return np.ascontiguousarray(expand_frames(v.distinct, v.inverse))


def labels_of(pair: PreferencePair) -> np.ndarray:
    return np.array([INVALID if pair.labels.get(d) is None else pair.labels[d] for d in DIMENSIONS], np.int64)


def frame_key(path: str, spec: FrameSpec) -> str:
    """Cache key of a video's reward-model frames; changes when the file (path, size, mtime) or the sampling
    and pixel budget or the decoding or resizing (``transforms.FRAMES_VERSION``) change.

    Raises:
        OSError: the file cannot be stat'ed.
    """
    st = os.stat(path)
    raw = (f"frames\0{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{spec.fps}\0{spec.min_pixels}\0"
           f"{spec.max_pixels}\0{spec.max_frames}\0{spec.factor}\0v{FRAMES_VERSION}"
           + ("" if (spec.num_frames, spec.rule, spec.kernel) == (None, "project", "uint8")
              else f"\0{spec.num_frames}\0{spec.rule}\0{spec.kernel}"))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _decode_video(row: dict, spec: FrameSpec, cache_dir: str) -> dict:
    """Ray Data task: decode one video into the frame cache; returns ``{path, key, status, error}`` (status
    ``cached`` / ``decoded`` / ``error``), never the frames."""
    import torch

    cache = TensorCache(cache_dir)
    out = {"path": row["path"], "key": "", "status": "error", "error": "",
           "node": current_node_id()}  # which node decoded it (stats: decode_nodes)
    try:
        out["key"] = key = frame_key(row["path"], spec)
        if cache.has(key):
            out["status"] = "cached"
            return out
        cache.put(key, torch.from_numpy(decode_for_reward(row["path"], spec)))
        out["status"] = "decoded"
    except (VideoDecodeError, OSError, ValueError) as exc:
        out["error"] = str(exc)
    return out


def pair_rows(pairs: list[PreferencePair], videos: dict[str, dict]) -> tuple[list[dict], list[Reject]]:
    """Key rows ``{idx, row, frames_a_key, frames_b_key, caption, labels}`` of the pairs whose two videos decoded, in the
    order of ``pairs``, and a Reject (row, column, path, the decoder's reason) per failed video of a pair.
    ``videos``: path -> ``{key, status, error}`` as returned by the decode tasks."""
    items, rejects = [], []
    for i, p in enumerate(pairs):
        bad = [(col, path) for col, path in (("chosen", p.chosen), ("rejected", p.rejected))
               if videos[path]["status"] == "error"]
        for col, path in bad:
            rejects.append(Reject(p.row, col, path, videos[path]["error"] or "undecodable video"))
        if not bad:
            items.append({"idx": i, "row": p.row, "frames_a_key": videos[p.chosen]["key"],
                          "frames_b_key": videos[p.rejected]["key"],
                          "caption": p.prompt, "labels": labels_of(p)})
    return items, rejects


def decode_pairs(pairs: list[PreferencePair], spec: FrameSpec, cache_dir: str) -> KeyRows:
    """Decode every distinct video of ``pairs`` once (Ray Data tasks spread over the nodes) into the frame
    cache under ``cache_dir`` (shared storage on a cluster); a rerun finds them there.

    Returns:
        KeyRows: ``{idx, row, frames_a_key, frames_b_key, caption, labels}`` ordered as ``pairs`` (loaded:
        frames ``(T, H, W, 3)`` uint8, labels ``(3,)`` int64) and a Reject per failed video of a pair.
    """
    videos = sorted({p.chosen for p in pairs} | {p.rejected for p in pairs})
    decoded = collect_rows(
        ray.data.from_items([{"path": v} for v in videos], override_num_blocks=max(1, min(len(videos), 64)))
        .map(_decode_video, fn_kwargs={"spec": spec, "cache_dir": cache_dir}),  # tasks SPREAD over nodes
        len(videos), "decode videos", "video") if videos else []
    video_rows = {r["path"]: r for r in decoded}
    items, rejects = pair_rows(pairs, video_rows)
    stats = {"videos": len(videos), "videos_cached": sum(r["status"] == "cached" for r in decoded),
             "videos_decoded": sum(r["status"] == "decoded" for r in decoded),
             "videos_failed": sum(r["status"] == "error" for r in decoded),
             "decode_nodes": len({r["node"] for r in decoded if r["status"] != "cached"})}
    return KeyRows(table=write_key_table(items, cache_dir), cache_dir=cache_dir, rejects=rejects, stats=stats)
