"""Video decoding: decord first, PyAV for what decord cannot open or decodes wrongly.

Every frame array returned here is ``uint8`` of shape ``(T, H, W, 3)`` (RGB) in *display* orientation:
the container's rotation flag is applied. Sample-aspect-ratio (non-square pixels) is reported in
``VideoInfo.sar`` and honoured by the resize helpers (``transforms.py``), not by the decoder.

PyAV is used instead of decord when the probe shows something decord is known to get wrong
(see ../shared/data/odd-encodings/MANIFEST.csv): GIF, several video streams (the two pick different
ones; we take the first), pixel formats other than 8-bit 4:2:0, tiny frames, AV1; and whenever decord
raises or returns frames of the wrong shape.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

try:  # decord ships x86-64 wheels only
    import decord

    decord.bridge.set_bridge("native")
except ImportError:  # pragma: no cover - depends on the platform
    decord = None

_DECORD_CODECS = {"h264", "hevc", "vp8", "vp9", "mpeg4"}
_DECORD_PIX_FMTS = {"yuv420p", "yuvj420p"}
# FFmpeg "decodes" text files as ANSI art through its tty demuxer: that is not a video.
_NOT_VIDEO_FORMATS = {"tty"}
_NOT_VIDEO_CODECS = {"ansi", "text", "bintext", "xbin", "idf"}


class VideoDecodeError(RuntimeError):
    """The file cannot be decoded into frames; the message names the path and the cause."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream.

    ``width``/``height`` are coded pixels before rotation; ``num_frames`` may be 0 when unknown;
    ``fps`` is frames per second (average rate); ``rotation`` in degrees counter-clockwise as FFmpeg's
    display matrix gives it; ``sar`` the sample (pixel) aspect ratio.
    """

    path: str
    codec: str
    container: str
    pix_fmt: str
    width: int
    height: int
    num_frames: int
    fps: float
    duration_s: float
    rotation: int
    sar: float
    num_video_streams: int

    @property
    def display_size(self) -> tuple[int, int]:
        """(height, width) in display pixels: rotation applied, non-square pixels stretched."""
        w = self.width * self.sar
        h = float(self.height)
        if self.rotation % 180 != 0:
            w, h = h, w
        return max(1, round(h)), max(1, round(w))

    @property
    def claimed_frames(self) -> int:
        """Frame count from the header, or estimated from duration * fps; 0 when neither is known."""
        if self.num_frames > 0:
            return self.num_frames
        if self.duration_s > 0 and self.fps > 0:
            return int(round(self.duration_s * self.fps))
        return 0


def probe(path: str | Path) -> VideoInfo:
    """Read stream metadata with PyAV (decodes one frame for the rotation flag).

    Raises:
        VideoDecodeError: not a readable video (missing file, no video stream, no decodable frame).
    """
    path = str(path)
    try:
        with av.open(path) as container:
            streams = container.streams.video
            if not streams:
                raise VideoDecodeError(f"{path}: no video stream")
            s = streams[0]
            cc = s.codec_context
            if container.format.name in _NOT_VIDEO_FORMATS or cc.name in _NOT_VIDEO_CODECS:
                raise VideoDecodeError(
                    f"{path}: not a video (FFmpeg reads it as {container.format.name}/{cc.name}, e.g. a text file)"
                )
            rate = s.average_rate or s.guessed_rate or s.base_rate
            fps = float(rate) if rate else 0.0
            if s.duration is not None and s.time_base is not None:
                duration = float(s.duration * s.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = 0.0
            sar = float(s.sample_aspect_ratio) if s.sample_aspect_ratio else 1.0
            rotation = 0
            for frame in container.decode(s):
                rotation = int(getattr(frame, "rotation", 0) or 0)
                break
            else:
                raise VideoDecodeError(f"{path}: no decodable frame")
            return VideoInfo(
                path=path,
                codec=cc.name,
                container=container.format.name,
                pix_fmt=cc.format.name if cc.format else "",
                width=cc.width,
                height=cc.height,
                num_frames=int(s.frames or 0),
                fps=fps,
                duration_s=duration,
                rotation=rotation,
                sar=sar if sar > 0 else 1.0,
                num_video_streams=len(streams),
            )
    except VideoDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV raises many error types; report them all with the path
        raise VideoDecodeError(f"{path}: cannot open video ({type(exc).__name__}: {exc})") from exc


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


def _use_decord(info: VideoInfo) -> bool:
    return (
        decord is not None
        and info.num_video_streams == 1
        and info.codec in _DECORD_CODECS
        and info.pix_fmt in _DECORD_PIX_FMTS
        and info.container not in ("gif", "mpegts")
        and info.width >= 16
        and info.height >= 16
        and info.num_frames > 0
    )


def _rotate(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Apply FFmpeg's display rotation (degrees counter-clockwise of the display matrix)."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=(1, 2))) if k else frames


def _decode_decord(info: VideoInfo, indices: np.ndarray) -> np.ndarray:
    vr = decord.VideoReader(info.path, num_threads=0)  # 0 = decord picks (like PyAV AUTO)
    n = len(vr)
    if n != info.num_frames:
        raise VideoDecodeError(f"decord counts {n} frames, container {info.num_frames}")
    frames = vr.get_batch(indices.tolist()).asnumpy()
    if frames.shape[1:] != (info.height, info.width, 3):
        raise VideoDecodeError(f"decord returned frames of shape {frames.shape[1:]}")
    return frames


def _decode_pyav(info: VideoInfo, indices: np.ndarray) -> tuple[np.ndarray, int]:
    """Decode sequentially, converting only the wanted frames. Returns (frames, frames decoded)."""
    wanted: dict[int, int] = {}
    for idx in indices.tolist():
        wanted[idx] = wanted.get(idx, 0) + 1
    last = int(indices.max())
    out: list[np.ndarray] = []
    count = 0
    with av.open(info.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        with contextlib.suppress(av.error.InvalidDataError, av.error.EOFError):
            for frame in container.decode(stream):
                if count in wanted:
                    arr = frame.to_ndarray(format="rgb24")
                    out.extend([arr] * wanted[count])
                count += 1
                if count > last:
                    break
    if not out:
        raise VideoDecodeError("PyAV decoded no frame")
    return np.stack(out), count


def _count_frames_pyav(path: str) -> int:
    count = 0
    with av.open(path) as container, contextlib.suppress(av.error.InvalidDataError, av.error.EOFError):
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for _ in container.decode(stream):
            count += 1
    return count


@dataclass(frozen=True)
class DecodedVideo:
    """Frames ``(T, H, W, 3)`` uint8 in display orientation, the source indices, the probe and backend."""

    frames: np.ndarray
    indices: np.ndarray
    info: VideoInfo
    backend: str


def load_video(
    path: str | Path,
    *,
    target_fps: float | None = 2.0,
    num_frames: int | None = None,
    min_decoded_fraction: float = 0.5,
    max_frames: int = 768,
    backend: str = "auto",
) -> DecodedVideo:
    """Decode only the sampled frames of a video (see :func:`sample_indices`).

    Args:
        path: video file (any container FFmpeg reads, GIF included).
        target_fps: frames per second of video to sample (default 2, the reward model's rate).
        num_frames: instead of ``target_fps``, exactly this many frames uniformly over the clip.
        min_decoded_fraction: reject when fewer than this fraction of the frames the container claims
            can be decoded (a truncated file).
        max_frames: upper clamp for the fps-based count.
        backend: ``auto`` (decord where it is safe, else PyAV), ``pyav`` (always PyAV) or ``decord``
            (decord where it is safe, with no fallback: for benchmarks).

    Raises:
        VideoDecodeError: unreadable, empty, or truncated beyond ``min_decoded_fraction``.
    """
    info = probe(path)
    total = info.claimed_frames
    if total <= 0:  # no duration, no frame count: count by decoding (one extra pass)
        total = _count_frames_pyav(info.path)
        if total <= 0:
            raise VideoDecodeError(f"{info.path}: no decodable frame")
    indices = sample_indices(total, info.fps, target_fps=target_fps, num_frames=num_frames, max_frames=max_frames)
    if backend not in ("auto", "pyav", "decord"):
        raise ValueError(f"unknown backend {backend!r}")
    used = "pyav"
    frames = None
    if backend != "pyav" and _use_decord(info):
        try:
            frames = _decode_decord(info, indices)
            used = "decord"
        except Exception as exc:  # noqa: BLE001 - any decord failure falls back to PyAV
            if backend == "decord":
                raise VideoDecodeError(f"{info.path}: decord failed ({exc})") from exc
            frames = None
    elif backend == "decord":
        raise VideoDecodeError(f"{info.path}: decord is unsafe for {info.codec}/{info.pix_fmt}/{info.container}")
    if frames is None:
        try:
            frames, decoded = _decode_pyav(info, indices)
        except VideoDecodeError as exc:
            raise VideoDecodeError(f"{info.path}: {exc}") from None
        except Exception as exc:  # noqa: BLE001
            raise VideoDecodeError(f"{info.path}: PyAV failed ({type(exc).__name__}: {exc})") from exc
        if len(frames) < len(indices):  # stream ended early: the container over-claims its length
            # Only a stated frame count is a promise; a duration-based estimate (MPEG-TS) is not.
            if info.num_frames > 0 and decoded < min_decoded_fraction * total:
                raise VideoDecodeError(
                    f"{info.path}: truncated: decoded {decoded} of {total} frames the container claims "
                    f"(< min_decoded_fraction {min_decoded_fraction})"
                )
            indices = sample_indices(
                decoded, info.fps, target_fps=target_fps, num_frames=num_frames, max_frames=max_frames
            )
            frames, _ = _decode_pyav(info, indices)
    return DecodedVideo(frames=_rotate(frames, info.rotation), indices=indices, info=info, backend=used)



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
