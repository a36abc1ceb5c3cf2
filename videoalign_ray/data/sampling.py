"""Which frames of a clip to decode (Qwen2-VL's ``fetch_video`` rule, docs/algorithms.md section 4)."""

from __future__ import annotations

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
) -> np.ndarray:
    """Uniform frame indices (docs/algorithms.md section 4; Qwen2-VL's ``fetch_video``).

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
    if num_frames is not None:
        n = int(num_frames)
    else:
        fps = video_fps if video_fps > 0 else (target_fps or 1.0)
        n = total_frames / fps * (target_fps or fps)
        n = int(round(n / frame_factor) * frame_factor)
        n = min(max(n, min_frames), max_frames)
        n = max(frame_factor, (n // frame_factor) * frame_factor)
    return np.linspace(0, total_frames - 1, n).round().astype(np.int64)
