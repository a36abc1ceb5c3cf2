"""Which frames of a clip to decode: for the reward model, Qwen2-VL's ``fetch_video`` rule (docs/algorithms.md
section 4); for the video generator, a window at the model's frame rate (:class:`ClipRule`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np


def sample_indices(
    total_frames: int,
    video_fps: float,
    *,
    target_fps: float | None = 2.0,
    num_frames: int | None = None,
    min_frames: int = 4,
    max_frames: int = 768,
    frame_factor: int = 2,
    rule: str = "project",
) -> np.ndarray:
    """Uniform frame indices (docs/algorithms.md section 4; Qwen2-VL's ``fetch_video``).

    ``rule="videoalign"``: :func:`videoalign_indices` instead (the count capped at the clip's length).

    With ``num_frames`` set, exactly that many indices spread uniformly over the clip. Otherwise
    ``total_frames / video_fps * target_fps`` frames, rounded to a multiple of ``frame_factor`` and clamped
    to ``[min_frames, max_frames]``, then ``round(linspace(0, total_frames - 1, n))``. Indices repeat when the
    clip has fewer frames than asked for.

    Returns:
        int64 array of shape (n,), non-decreasing, within ``[0, total_frames - 1]``.

    Raises:
        ValueError: ``total_frames < 1``.
    """
    if total_frames < 1:
        raise ValueError(f"total_frames must be >= 1, got {total_frames}")
    if rule == "videoalign":
        return videoalign_indices(total_frames, video_fps, fps=None if num_frames is not None else target_fps,
                                  num_frames=num_frames, max_frames=max_frames)
    if rule != "project":
        raise ValueError(f"unknown frame rule {rule!r}")
    if num_frames is not None:
        n = int(num_frames)
    else:
        fps = video_fps if video_fps > 0 else (target_fps or 1.0)
        n = total_frames / fps * (target_fps or fps)
        n = int(round(n / frame_factor) * frame_factor)
        n = min(max(n, min_frames), max_frames)
        n = max(frame_factor, (n // frame_factor) * frame_factor)
    return np.linspace(0, total_frames - 1, n).round().astype(np.int64)


def videoalign_indices(total_frames: int, video_fps: float, *, fps: float | None = 2.0, num_frames: int | None = None,
                       min_frames: int = 4, max_frames: int = 768) -> np.ndarray:
    """VideoAlign's frame indices (``vision_process.py``: qwen-vl-utils' ``smart_nframes``, then
    ``torch.linspace(0, total - 1, n).round()``): ``num_frames`` rounded to an even count, or ``total / video_fps
    * fps`` clamped to ``[ceil_even(min_frames), floor_even(min(max_frames, total))]`` and rounded to an even
    count; either way at most ``total_frames`` (a 3-frame clip gives 2 frames, 7 frames at 1 fps give 6 at
    2 fps, never a repeated frame). Python's ``round`` (half to even) and float32 ``linspace`` as the original.

    Returns:
        int64 array of shape (n,), increasing, within ``[0, total_frames - 1]``.

    Raises:
        ValueError: fewer than 2 frames would be sampled (a 1-frame clip), as the original raises.
    """
    import torch

    factor = 2
    if num_frames is not None:
        n = round(num_frames / factor) * factor
    else:
        lo = math.ceil(min_frames / factor) * factor
        hi = math.floor(min(max_frames, total_frames) / factor) * factor
        n = total_frames / video_fps * (fps if fps is not None else 2.0)
        n = round(min(max(n, lo), hi) / factor) * factor
    n = min(n, total_frames)
    if not factor <= n <= total_frames:
        raise ValueError(f"nframes should be in [{factor}, {total_frames}], got {n} ({total_frames} frames at "
                         f"{video_fps:g} fps)")
    return torch.linspace(0, total_frames - 1, n).round().long().numpy()


@dataclass(frozen=True)
class ClipRule:
    """Which frames a video generator trains on: ``num_frames`` consecutive frames at the model's ``fps`` (Wan:
    81 at 16 fps, 5.06 s) from a window of the clip.

    ``start``: ``center`` (default: the window sits in the middle of the clip, away from the fade-ins, titles and
    cuts clips often carry at their ends, and the two clips of a pair are cut alike) or ``start`` (from the first
    frame). ``short_clips``: a clip shorter than the window is ``trim``-med to the longest ``temporal_factor * k + 1``
    frames it holds at ``fps`` (the lengths the VAE encodes; Wan: 4k+1) when that is at least ``min_frames``, else
    rejected; ``reject`` rejects it. Never padded by repeating frames. ``min_frames`` None: half the window, rounded
    up to a valid length (Wan: 41 frames, 2.5 s).
    """

    fps: float
    num_frames: int
    start: Literal["center", "start"] = "center"
    short_clips: Literal["trim", "reject"] = "trim"
    temporal_factor: int = 4
    min_frames: int | None = None

    def __post_init__(self):
        if self.fps <= 0 or self.num_frames < 1 or self.temporal_factor < 1:
            raise ValueError(f"ClipRule needs fps > 0, num_frames >= 1, temporal_factor >= 1: {self}")
        if self.start not in ("center", "start") or self.short_clips not in ("trim", "reject"):
            raise ValueError(f"ClipRule start must be center|start and short_clips trim|reject: {self}")

    @property
    def minimum(self) -> int:
        """The fewest frames a trimmed clip may keep."""
        if self.min_frames is not None:
            return self.min_frames
        tf = self.temporal_factor
        return min(self.num_frames, math.ceil(((self.num_frames + 1) // 2 - 1) / tf) * tf + 1)

    def key(self) -> str:
        """A string naming the rule, for cache keys (``v1``: this rule's version)."""
        return (f"clip-v1:{self.fps:g}fps:{self.num_frames}:{self.start}:{self.short_clips}:"
                f"{self.temporal_factor}:{self.minimum}")


class ShortClipError(ValueError):
    """A clip shorter than the generator's window that the rule rejects (the message says how short and why)."""


def clip_indices(total_frames: int, video_fps: float, rule: ClipRule) -> tuple[np.ndarray, bool, bool]:
    """Source frame indices of the clip's window at the model's rate (:class:`ClipRule`).

    The window's frames sit at times ``t0 + k / rule.fps``, ``k = 0..n-1`` (seconds, frame ``i`` of the source shown
    at ``i / video_fps``); each takes the nearest source frame. ``n`` is ``rule.num_frames``, or for a short clip
    under ``trim`` the longest valid length that fits. A source faster than the model drops frames; a slower one
    shows a frame for as long as it lasts (the clip plays at its own speed either way: ``resampled``).

    Returns:
        ``(indices, trimmed, resampled)``: int64 ``(n,)`` non-decreasing in ``[0, total_frames - 1]``; whether the
        window was shortened; whether the source rate differs from the model's.

    Raises:
        ShortClipError: the clip is shorter than the window and ``reject``, or shorter than ``rule.minimum``.
        ValueError: ``total_frames < 1`` or no frame rate.
    """
    if total_frames < 1:
        raise ValueError(f"total_frames must be >= 1, got {total_frames}")
    if not video_fps or video_fps <= 0:
        raise ValueError("the clip has no frame rate: its frames cannot be placed in time")
    last = (total_frames - 1) / video_fps  # seconds of the last frame
    fits = math.floor(last * rule.fps + 1e-6) + 1  # frames at the model's rate that the clip covers
    n, trimmed = rule.num_frames, False
    if fits < n:
        what = (f"{total_frames} frames at {video_fps:g} fps hold {fits} frames at the model's {rule.fps:g} fps, "
                f"fewer than its {n}")
        if rule.short_clips == "reject":
            raise ShortClipError(f"short clip: {what} (--short-clips reject)")
        tf = rule.temporal_factor
        n, trimmed = (fits - 1) // tf * tf + 1, True
        if n < rule.minimum:
            raise ShortClipError(f"short clip: {what}, and trimming leaves {n} < the minimum {rule.minimum}")
    span = (n - 1) / rule.fps
    t0 = (last - span) / 2 if rule.start == "center" else 0.0
    times = t0 + np.arange(n) / rule.fps
    indices = np.clip(np.round(times * video_fps + 1e-9), 0, total_frames - 1).astype(np.int64)
    return indices, trimmed, abs(video_fps - rule.fps) > 1e-3
