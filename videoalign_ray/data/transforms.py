"""Frame resizing: aspect-preserving, to a pixel budget (reward model) or to the generator's exact size.

All functions take and return ``uint8`` frames ``(T, H, W, 3)``. Resampling is bicubic with antialiasing
(``torch.nn.functional.interpolate``), which matches torchvision's tensor resize used by Qwen2-VL (downscaling runs
PyTorch's uint8 kernel as torchvision v2 does; within 2 levels of the float rule on video frames).
Non-square pixels are honoured through ``sar`` (display width = coded width * sar).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

# Bumped whenever decoding (data/video.py) or resizing (here) changes the pixels of a frame; part of the frame
# and latent cache keys, so caches written before the change are not mixed with frames made after it.
# 2 (2026-11-24): upscaling antialiased as the processor does; HEVC / MPEG-4 decoded by PyAV (decord's seeks
# returned wrong frames); clips with a rotation flag decoded by PyAV (decord's 180-degree ones came out upside
# down).
FRAMES_VERSION = 2


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 128 * 28 * 28, max_pixels: int = 448 * 448
) -> tuple[int, int]:
    """Qwen2-VL's size rule: H and W multiples of ``factor``, ``min_pixels <= H*W <= max_pixels``, aspect kept.

    Returns:
        (height, width) in pixels.

    Raises:
        ValueError: an aspect ratio above 200 (Qwen2-VL's own limit).
    """
    if max(height, width) / max(min(height, width), 1) > 200:
        raise ValueError(f"aspect ratio of {height}x{width} exceeds 200")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool): a forked child makes its own
_CHUNK_TIMEOUT_S = 600.0


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="resize"))
    return _POOL[1]


def _over_frames(fn, frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """``fn(chunk, height, width)`` (uint8 ``(t, H, W, 3)`` -> uint8 ``(t, height, width, 3)``) over
    ``torch.get_num_threads()`` chunks of frames on as many threads: PyTorch's uint8 resize kernel works on
    one core whatever the thread setting (20 frames 1080p -> 252x448: 29 ms on 1 thread, 28 ms on 2; 16 ms
    as two chunks on two threads, the same bytes).

    Raises:
        TimeoutError: a chunk took longer than ``_CHUNK_TIMEOUT_S`` (600 s).
    """
    n = min(torch.get_num_threads(), len(frames))
    if n < 2:
        return fn(frames, height, width)
    out = np.empty((len(frames), height, width, 3), np.uint8)
    bounds = np.linspace(0, len(frames), n + 1).astype(int)

    def chunk(i: int) -> None:
        out[bounds[i]:bounds[i + 1]] = fn(frames[bounds[i]:bounds[i + 1]], height, width)

    pool = _pool()
    for f in [pool.submit(chunk, i) for i in range(n)]:
        try:
            f.result(timeout=_CHUNK_TIMEOUT_S)
        except TimeoutError:
            raise TimeoutError(f"resizing {len(frames)} frames to {height}x{width}: a chunk took over "
                               f"{_CHUNK_TIMEOUT_S:.0f} s") from None
    return out


def _downscale(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    # PyTorch's uint8 kernel (channels-last, antialiased bicubic; what torchvision v2 runs on uint8 CPU
    # tensors) is ~20x faster than the float round trip and within 2 levels of it on video frames
    # (tests/test_video.py).
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # channels-last NCHW view
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1).numpy()


def _upscale(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    # Frames below the pixel budget: the uint8 kernel clips bicubic overshoot differently (up to 26 levels
    # on noise), so this rare path stays in float, on a contiguous NCHW copy (faster than the channels-last
    # view, same values). ``antialias=True`` as the processor passes it: when upscaling PyTorch's
    # antialiased kernel is PIL's bicubic (a = -0.5), not the plain one (a = -0.75), up to 30 levels apart
    # on noise, and the separable kernel takes about half the time.
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous().float()
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 ``(T, H, W, 3)`` -> uint8 ``(T, height, width, 3)``, C-contiguous (bicubic, antialiased)."""
    if frames.shape[1:3] == (height, width) and frames.dtype == np.uint8:
        return np.ascontiguousarray(frames)  # already at the target size: no float round trip
    if height < frames.shape[1] or width < frames.shape[2]:
        return np.ascontiguousarray(_over_frames(_downscale, frames, height, width))
    return np.ascontiguousarray(_upscale(frames, height, width))  # the float kernel uses its own threads


def resize_to_budget(
    frames: np.ndarray, *, sar: float = 1.0, factor: int = 28, min_pixels: int = 128 * 28 * 28,
    max_pixels: int = 448 * 448, kernel: str = "uint8",
) -> np.ndarray:
    """Resize to the reward model's budget (see :func:`smart_resize`) from the display aspect.

    ``kernel="float"``: always the float32 antialiased bicubic, clamped and rounded (torchvision's tensor resize
    of uint8 frames, what VideoAlign's ``fetch_video`` runs), instead of PyTorch's uint8 kernel when downscaling.
    """
    h, w = frames.shape[1], frames.shape[2] * sar
    th, tw = smart_resize(int(h), max(1, round(w)), factor, min_pixels, max_pixels)
    if kernel == "float":
        if frames.shape[1:3] == (th, tw):
            return np.ascontiguousarray(frames)
        return np.ascontiguousarray(_upscale(frames, th, tw))
    if kernel != "uint8":
        raise ValueError(f"unknown resize kernel {kernel!r}")
    return _resize(frames, th, tw)


def resize_center_crop(frames: np.ndarray, height: int, width: int, *, sar: float = 1.0) -> np.ndarray:
    """Scale so the display frame covers ``height x width`` (aspect kept), then center-crop to it.

    Returns:
        uint8 ``(T, height, width, 3)``.
    """
    h, w = frames.shape[1], frames.shape[2] * sar
    scale = max(height / h, width / w)
    sh, sw = max(height, math.ceil(h * scale - 1e-6)), max(width, math.ceil(w * scale - 1e-6))
    out = _resize(frames, sh, sw)
    top, left = (sh - height) // 2, (sw - width) // 2
    return np.ascontiguousarray(out[:, top : top + height, left : left + width])
