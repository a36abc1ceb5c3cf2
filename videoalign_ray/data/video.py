"""Video decoding: decord first, PyAV for what decord cannot open or decodes wrongly.

Every frame array returned here is ``uint8`` of shape ``(T, H, W, 3)`` (RGB) in *display* orientation:
the container's rotation flag is applied. Sample-aspect-ratio (non-square pixels) is reported in
``VideoInfo.sar`` and honoured by the resize helpers (``transforms.py``), not by the decoder.

PyAV is used instead of decord when the probe shows something decord is known to get wrong
(see ../shared/data/odd-encodings/MANIFEST.csv): GIF, several video streams (the two pick different
ones; we take the first), pixel formats other than 8-bit 4:2:0, tiny frames; every codec but H.264
(decord's random access returns the wrong frames of HEVC and MPEG-4 Part 2 with B-frames, up to 4 frames
off: tests/test_video.py); and whenever decord raises or returns frames of the wrong shape.

Untrusted bytes (uploads, any dataset) are opened with an allow-list of demuxers that never open other
files (no concat, HLS, DASH, SDP, image2 patterns; ``file:`` protocol only) and checked against
:class:`DecodeLimits` (resolution, duration, frame counts, decoded bytes) before any frame is allocated.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from videoalign_ray.data.encode import write_mp4  # noqa: F401 - re-exported: the decoder's counterpart
from videoalign_ray.data.sampling import sample_indices

try:  # decord ships x86-64 wheels only
    import decord

    decord.bridge.set_bridge("native")
except ImportError:  # pragma: no cover - depends on the platform
    decord = None

# Codecs whose frames decord returns exactly at sparse indices (checked against PyAV's sequential decode):
# HEVC with a keyframe every 12 frames and MPEG-4 Part 2 with B-frames come back up to 4 frames off.
_DECORD_CODECS = {"h264"}
_DECORD_PIX_FMTS = {"yuv420p", "yuvj420p"}
# FFmpeg "decodes" text files as ANSI art through its tty demuxer: that is not a video.
_NOT_VIDEO_FORMATS = {"tty"}
_NOT_VIDEO_CODECS = {"ansi", "text", "bintext", "xbin", "idf"}
# Demuxers that read only the bytes of the file they are given. Everything else (concat, hls, dash, sdp,
# image2 and its pattern matching, tee, ...) is refused before FFmpeg picks it; "file" is the only protocol.
ALLOWED_FORMATS = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", "gif", "mpegts", "flv", "ogg")
_OPEN_OPTIONS = {"format_whitelist": ",".join(ALLOWED_FORMATS), "protocol_whitelist": "file"}


class VideoDecodeError(RuntimeError):
    """The file cannot be decoded into frames; the message names the path and the cause."""


class VideoLimitError(VideoDecodeError):
    """The video is readable but over a :class:`DecodeLimits` limit (checked before decoding frames)."""


@dataclass(frozen=True)
class DecodeLimits:
    """Caps checked from the container's header before any frame is allocated.

    ``max_frame_pixels``: coded width x height of one frame. ``max_duration_s``: seconds of video.
    ``max_source_frames``: frames the container holds (or that are counted by decoding when it does not
    say). ``max_sampled_frames``: frames a sampler may ask for (repeats included). ``max_decoded_bytes``:
    bytes of the distinct decoded RGB frames (repeated frames are views and cost nothing).
    The defaults are generous (training data); the reward service passes tighter ones.
    """

    max_frame_pixels: int = 8192 * 4320
    max_duration_s: float = 4 * 3600.0
    max_source_frames: int = 1_000_000
    max_sampled_frames: int = 4096
    max_decoded_bytes: int = 8 << 30


# FFmpeg's stream-info search decodes up to ~7 frames of every stream to learn what the headers leave out
# (pixel format, decoder delay): ~4.6 ms a file on the benchmark's clips, 31 ms on a 3026x1386 one. Nothing
# here needs it: the probe decodes its one frame itself and reads those values from the decoder. Streams past
# the 32nd (hostile files) are probed as FFmpeg does by default.
_STREAM_OPTIONS = {"skip_frame": "all"}


def _decoder_options(limits: DecodeLimits) -> dict[str, str]:
    """FFmpeg decoder options: refuse frames over ``limits.max_frame_pixels`` (a header can lie)."""
    return {"max_pixels": str(limits.max_frame_pixels)}


def _open(path: str):
    """``av.open`` for reading untrusted files: allow-listed demuxers, ``file`` protocol only, no decoding
    while FFmpeg looks for stream information."""
    return av.open(path, options=dict(_OPEN_OPTIONS), stream_options=[dict(_STREAM_OPTIONS) for _ in range(32)])


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


def probe(path: str | Path, limits: DecodeLimits | None = None) -> VideoInfo:
    """Read stream metadata with PyAV (decodes one frame for the rotation flag, after the size check).

    Raises:
        VideoDecodeError: not a readable video (missing file, a demuxer outside :data:`ALLOWED_FORMATS`, no
            video stream, no decodable frame).
        VideoLimitError: a frame larger than ``limits.max_frame_pixels``.
    """
    path = str(path)
    limits = limits or DecodeLimits()
    try:
        with _open(path) as container:
            streams = container.streams.video
            if not streams:
                raise VideoDecodeError(f"{path}: no video stream")
            s = streams[0]
            cc = s.codec_context
            if container.format.name in _NOT_VIDEO_FORMATS or cc.name in _NOT_VIDEO_CODECS:
                raise VideoDecodeError(
                    f"{path}: not a video (FFmpeg reads it as {container.format.name}/{cc.name}, e.g. a text file)"
                )
            if cc.width * cc.height > limits.max_frame_pixels:
                raise VideoLimitError(f"{path}: frame of {cc.width}x{cc.height} pixels is over the limit of "
                                      f"{limits.max_frame_pixels} pixels per frame")
            rate = s.average_rate or s.guessed_rate or s.base_rate
            fps = float(rate) if rate else 0.0
            if s.duration is not None and s.time_base is not None:
                duration = float(s.duration * s.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = 0.0
            # one frame on one thread: FFmpeg's automatic threads cost more to start than this frame takes
            # (42 real clips: 1.01 s -> 0.79 s for the probe); the decoder itself refuses a frame over the
            # pixel limit, whatever size the header claimed
            cc.thread_count = 1
            cc.options = _decoder_options(limits)
            frame = next(container.decode(s), None)
            if frame is None:
                raise VideoDecodeError(f"{path}: no decodable frame")
            # pixel format and the bitstream's pixel aspect come from the decoder (the open did not decode)
            sar = s.sample_aspect_ratio or cc.sample_aspect_ratio
            sar = float(sar) if sar else 1.0
            return VideoInfo(
                path=path,
                codec=cc.name,
                container=container.format.name,
                pix_fmt=frame.format.name,
                width=cc.width,
                height=cc.height,
                num_frames=int(s.frames or 0),
                fps=fps,
                duration_s=duration,
                rotation=int(frame.rotation or 0),
                sar=sar if sar > 0 else 1.0,
                num_video_streams=len(streams),
            )
    except VideoDecodeError:
        raise
    except av.error.ArgumentError as exc:  # what FFmpeg says when only refused demuxers match
        raise VideoDecodeError(f"{path}: not a video container this service reads (allowed: "
                               f"{', '.join(f.split(',')[0] for f in ALLOWED_FORMATS)}) ({exc.strerror})") from exc
    except Exception as exc:  # noqa: BLE001 - PyAV raises many error types; report them all with the path
        raise VideoDecodeError(f"{path}: cannot open video ({type(exc).__name__}: {exc})") from exc


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
    """Frames at ``indices`` (distinct, increasing)."""
    vr = decord.VideoReader(info.path, num_threads=0)  # 0 = decord picks (like PyAV AUTO)
    n = len(vr)
    if n != info.num_frames:
        raise VideoDecodeError(f"decord counts {n} frames, container {info.num_frames}")
    frames = vr.get_batch(indices.tolist()).asnumpy()
    if frames.shape[1:] != (info.height, info.width, 3):
        raise VideoDecodeError(f"decord returned frames of shape {frames.shape[1:]}")
    return frames


def _decode_pyav(info: VideoInfo, indices: np.ndarray) -> tuple[np.ndarray, int]:
    """Decode sequentially, converting only the frames at ``indices`` (distinct, increasing).

    Returns (frames, frames decoded); fewer frames than indices when the stream ends early.
    """
    wanted = set(indices.tolist())
    last = int(indices.max())
    out: list[np.ndarray] = []
    count = 0
    with _open(info.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        with contextlib.suppress(av.error.InvalidDataError, av.error.EOFError):
            for frame in container.decode(stream):
                if count in wanted:
                    arr = frame.to_ndarray(format="rgb24")
                    if arr.shape[:2] != (info.height, info.width):  # a mid-stream size change: refuse, do not grow
                        raise VideoDecodeError(f"frame {count} is {arr.shape[1]}x{arr.shape[0]}, the stream "
                                               f"header says {info.width}x{info.height}")
                    out.append(arr)
                count += 1
                if count > last:
                    break
    if not out:
        raise VideoDecodeError("PyAV decoded no frame")
    return np.stack(out), count


def _count_frames_pyav(path: str, limit: int) -> int:
    """Frames decodable from the stream, counted by decoding; stops (and raises) past ``limit``."""
    count = 0
    with _open(path) as container, contextlib.suppress(av.error.InvalidDataError, av.error.EOFError):
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for _ in container.decode(stream):
            count += 1
            if count > limit:
                raise VideoLimitError(f"{path}: more than {limit} frames (max_source_frames)")
    return count


@dataclass(frozen=True)
class DecodedVideo:
    """Sampled frames in display orientation, the source indices, the probe and the backend.

    ``distinct``: uint8 ``(U, H, W, 3)``, one per distinct source index; ``inverse``: int64 ``(T,)`` maps each
    sampled position to its row of ``distinct`` (a sampler repeats frames of short clips).
    """

    distinct: np.ndarray
    inverse: np.ndarray
    indices: np.ndarray
    info: VideoInfo
    backend: str

    @property
    def frames(self) -> np.ndarray:
        """uint8 ``(T, H, W, 3)``: a read-only broadcast view when one frame is repeated, else a copy."""
        return expand_frames(self.distinct, self.inverse)


def expand_frames(distinct: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """``distinct[inverse]`` without copying when every position shows the same frame (a view then)."""
    if len(distinct) == 1:
        return np.broadcast_to(distinct, (len(inverse), *distinct.shape[1:]))
    if len(inverse) == len(distinct) and np.array_equal(inverse, np.arange(len(distinct))):
        return distinct
    return distinct[inverse]


def check_limits(info: VideoInfo, total_frames: int, sampled: np.ndarray, distinct: np.ndarray,
                 limits: DecodeLimits) -> None:
    """Refuse, before decoding, what would exceed ``limits`` (see :class:`DecodeLimits`); ``sampled`` are the
    frame indices a sampler asked for, ``distinct`` the ones that will be decoded.

    Raises:
        VideoLimitError: naming the limit and the value that broke it.
    """
    def over(what: str, value, limit) -> VideoLimitError:
        return VideoLimitError(f"{info.path}: {what} {value} is over the limit of {limit}")

    if info.duration_s > limits.max_duration_s:
        raise over("duration (s)", round(info.duration_s, 3), limits.max_duration_s)
    if total_frames > limits.max_source_frames:
        raise over("frame count", total_frames, limits.max_source_frames)
    if len(sampled) > limits.max_sampled_frames:
        raise over("sampled frame count", len(sampled), limits.max_sampled_frames)
    decoded = len(distinct) * info.width * info.height * 3
    if decoded > limits.max_decoded_bytes:
        raise over("decoded size (bytes)", decoded, limits.max_decoded_bytes)


def load_video(
    path: str | Path,
    *,
    target_fps: float | None = 2.0,
    num_frames: int | None = None,
    min_decoded_fraction: float = 0.5,
    max_frames: int = 768,
    backend: str = "auto",
    limits: DecodeLimits | None = None,
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
        limits: checked before decoding (default :class:`DecodeLimits`).

    Raises:
        VideoDecodeError: unreadable, a refused container, empty, or truncated beyond ``min_decoded_fraction``.
        VideoLimitError: over ``limits`` (a subclass of VideoDecodeError).
    """
    limits = limits or DecodeLimits()
    info = probe(path, limits)
    total = info.claimed_frames
    if total <= 0:  # no duration, no frame count: count by decoding (one extra pass)
        total = _count_frames_pyav(info.path, limits.max_source_frames)
        if total <= 0:
            raise VideoDecodeError(f"{info.path}: no decodable frame")
    indices = sample_indices(total, info.fps, target_fps=target_fps, num_frames=num_frames, max_frames=max_frames)
    distinct, inverse = np.unique(indices, return_inverse=True)
    check_limits(info, total, indices, distinct, limits)
    if backend not in ("auto", "pyav", "decord"):
        raise ValueError(f"unknown backend {backend!r}")
    used = "pyav"
    frames = None
    if backend != "pyav" and _use_decord(info):
        try:
            frames = _decode_decord(info, distinct)
            used = "decord"
        except Exception as exc:  # noqa: BLE001 - any decord failure falls back to PyAV
            if backend == "decord":
                raise VideoDecodeError(f"{info.path}: decord failed ({exc})") from exc
            frames = None
    elif backend == "decord":
        raise VideoDecodeError(f"{info.path}: decord is unsafe for {info.codec}/{info.pix_fmt}/{info.container}")
    if frames is None:
        try:
            frames, decoded = _decode_pyav(info, distinct)
        except VideoDecodeError as exc:
            raise VideoDecodeError(f"{info.path}: {exc}") from None
        except Exception as exc:  # noqa: BLE001
            raise VideoDecodeError(f"{info.path}: PyAV failed ({type(exc).__name__}: {exc})") from exc
        if len(frames) < len(distinct):  # stream ended early: the container over-claims its length
            # Only a stated frame count is a promise; a duration-based estimate (MPEG-TS) is not.
            if info.num_frames > 0 and decoded < min_decoded_fraction * total:
                raise VideoDecodeError(
                    f"{info.path}: truncated: decoded {decoded} of {total} frames the container claims "
                    f"(< min_decoded_fraction {min_decoded_fraction})"
                )
            indices = sample_indices(
                decoded, info.fps, target_fps=target_fps, num_frames=num_frames, max_frames=max_frames
            )
            distinct, inverse = np.unique(indices, return_inverse=True)
            frames, _ = _decode_pyav(info, distinct)
            if len(frames) < len(distinct):
                raise VideoDecodeError(f"{info.path}: decoded {len(frames)} frames on a second pass, {decoded} on the first")
    return DecodedVideo(distinct=_rotate(frames, info.rotation), inverse=inverse.reshape(-1), indices=indices,
                        info=info, backend=used)
