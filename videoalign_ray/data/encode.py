"""Writing videos: H.264 mp4 from uint8 frames, atomically."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_mp4(path: str | Path, frames: np.ndarray, fps: float = 8.0, crf: int = 18, lossless: bool = False) -> Path:
    """Encode uint8 frames ``(T, H, W, 3)`` as H.264 mp4 (yuv420p) atomically; H and W must be even.

    ``lossless=True`` (x264 ``qp=0``) makes the decoded pixels a pure function of ``frames``. In CRF mode the
    same frames encoded in two processes that had imported Ray (which loads decord's bundled FFmpeg next to
    PyAV's) decoded to different pixels (up to 21 levels), even with one encoder thread; datasets that must
    be reproducible (the synthetic world) use lossless.

    Raises:
        ValueError: wrong dtype / shape or odd frame size.
    """
    from videoalign_ray.runtime.fileio import atomic_path

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"H.264 yuv420p needs even height and width, got {frames.shape[1]}x{frames.shape[2]}")
    path = Path(path)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=int(round(fps)))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"qp": "0"} if lossless else {"crf": str(crf)}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path
