"""Frame resizing: aspect-preserving, to a pixel budget (reward model) or to the generator's exact size.

All functions take and return ``uint8`` frames ``(T, H, W, 3)``. Resampling is bicubic with antialiasing
(``torch.nn.functional.interpolate``), which matches torchvision's tensor resize used by Qwen2-VL (downscaling runs
PyTorch's uint8 kernel as torchvision v2 does; within 2 levels of the float rule on video frames).
Non-square pixels are honoured through ``sar`` (display width = coded width * sar).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


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


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    if frames.shape[1:3] == (height, width) and frames.dtype == np.uint8:
        return np.ascontiguousarray(frames)  # already at the target size: no float round trip
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # channels-last NCHW view
    antialias = height < x.shape[-2] or width < x.shape[-1]
    if antialias:
        # Downscaling: PyTorch's uint8 kernel (channels-last, antialiased bicubic; what torchvision v2 runs
        # on uint8 CPU tensors) is ~20x faster than the float round trip and within 2 levels of it on video
        # frames (tests/test_video.py).
        x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
        return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
    # Upscaling (frames below the pixel budget): the uint8 kernel clips bicubic overshoot differently
    # (up to 26 levels on noise), so this rare path stays in float, on a contiguous NCHW copy: the same
    # values as on the channels-last view, in ~60% of the time (26 frames 180x320 -> 252x448: 178 -> 105 ms).
    x = F.interpolate(x.contiguous().float(), size=(height, width), mode="bicubic", align_corners=False,
                      antialias=False)
    return np.ascontiguousarray(x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())


def resize_to_budget(
    frames: np.ndarray, *, sar: float = 1.0, factor: int = 28, min_pixels: int = 128 * 28 * 28,
    max_pixels: int = 448 * 448,
) -> np.ndarray:
    """Resize to the reward model's budget (see :func:`smart_resize`) from the display aspect."""
    h, w = frames.shape[1], frames.shape[2] * sar
    th, tw = smart_resize(int(h), max(1, round(w)), factor, min_pixels, max_pixels)
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
