"""Which frames of a clip to decode (Qwen2-VL's ``fetch_video`` rule, docs/algorithms.md section 4)."""

from __future__ import annotations

import math

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
