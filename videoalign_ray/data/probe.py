"""What a video file says about itself, read safely: the allow-listed open, the header checks and the probe.

Untrusted bytes (uploads, any dataset) are opened with an allow-list of demuxers that never open other
files (no concat, HLS, DASH, SDP, image2 patterns; ``file:`` protocol only) and checked against
:class:`DecodeLimits` (resolution, duration, frame counts, decoded bytes) before any frame is allocated.
The decoders themselves are in ``video.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

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


def decoder_options(limits: DecodeLimits) -> dict[str, str]:
    """FFmpeg decoder options: refuse frames over ``limits.max_frame_pixels`` (a header can lie)."""
    return {"max_pixels": str(limits.max_frame_pixels)}


def open_untrusted(path: str):
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


def probe(path: str | Path, limits: DecodeLimits | None = None, *,
          on_header: Callable[[VideoInfo], None] | None = None) -> VideoInfo:
    """Read stream metadata with PyAV (decodes one frame for the rotation flag, after the size check).

    ``on_header(info)`` runs once the header passed the checks and before that frame decodes, with what the
    header says (``pix_fmt`` empty, ``rotation`` 0 until the frame is seen): ``load_video`` starts decord there.

    Raises:
        VideoDecodeError: not a readable video (missing file, a demuxer outside :data:`ALLOWED_FORMATS`, no
            video stream, no decodable frame).
        VideoLimitError: a frame larger than ``limits.max_frame_pixels``.
    """
    path = str(path)
    limits = limits or DecodeLimits()
    try:
        with open_untrusted(path) as container:
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
            header = VideoInfo(path=path, codec=cc.name, container=container.format.name, pix_fmt="",
                               width=cc.width, height=cc.height, num_frames=int(s.frames or 0), fps=fps,
                               duration_s=duration, rotation=0, sar=1.0, num_video_streams=len(streams))
            if on_header is not None:
                on_header(header)
            # one frame on one thread: FFmpeg's automatic threads cost more to start than this frame takes
            # (42 real clips: 1.01 s -> 0.79 s for the probe); the decoder itself refuses a frame over the
            # pixel limit, whatever size the header claimed
            cc.thread_count = 1
            cc.options = decoder_options(limits)
            frame = next(container.decode(s), None)
            if frame is None:
                raise VideoDecodeError(f"{path}: no decodable frame")
            # pixel format and the bitstream's pixel aspect come from the decoder (the open did not decode)
            sar = s.sample_aspect_ratio or cc.sample_aspect_ratio
            sar = float(sar) if sar else 1.0
            return dataclasses.replace(header, pix_fmt=frame.format.name, width=cc.width, height=cc.height,
                                       rotation=int(frame.rotation or 0), sar=sar if sar > 0 else 1.0)
    except VideoDecodeError:
        raise
    except av.error.ArgumentError as exc:  # what FFmpeg says when only refused demuxers match
        raise VideoDecodeError(f"{path}: not a video container this service reads (allowed: "
                               f"{', '.join(f.split(',')[0] for f in ALLOWED_FORMATS)}) ({exc.strerror})") from exc
    except Exception as exc:  # noqa: BLE001 - PyAV raises many error types; report them all with the path
        raise VideoDecodeError(f"{path}: cannot open video ({type(exc).__name__}: {exc})") from exc


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
