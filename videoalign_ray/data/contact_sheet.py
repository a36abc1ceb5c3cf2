"""One image that shows a few videos at a glance: a row per sample, ``frames_per_row`` evenly spaced frames of
each video side by side, a caption above each row (the diffusers training scripts' validation image, for video).
"""

from __future__ import annotations

import numpy as np


def contact_sheet(rows: list[tuple[str, list[np.ndarray]]], title: str, frames_per_video: int = 4,
                  max_side: int = 160):
    """A PIL RGB image: ``title`` on top, then per row its caption and each of its videos as
    ``frames_per_video`` frames (uint8 ``(T, H, W, 3)`` arrays, evenly spaced, first and last included), videos
    separated by a gap. Frames are scaled so their longer side is at most ``max_side`` pixels (nearest
    neighbour upscaling for tiny clips, so a 32x32 video stays readable).

    Raises:
        ValueError: no row, or a video that is not ``(T, H, W, 3)`` uint8.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    strips = []
    for caption, videos in rows:
        tiles = []
        for video in videos:
            video = np.asarray(video)
            if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
                raise ValueError(f"{caption!r}: a video must be uint8 (T, H, W, 3), got {video.dtype} {video.shape}")
            idx = np.unique(np.linspace(0, len(video) - 1, min(frames_per_video, len(video))).round().astype(int))
            h, w = video.shape[1:3]
            scale = max_side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            resample = Image.NEAREST if scale >= 1 else Image.BILINEAR
            tiles.append([Image.fromarray(video[i]).resize(size, resample) for i in idx])
        strips.append((caption, tiles))
    gap, line = 8, 14
    widths = [sum(sum(t.width for t in tiles) for tiles in vids) + gap * (len(vids) + 1) for _, vids in strips]
    heights = [line + max(t.height for tiles in vids for t in tiles) + gap for _, vids in strips]
    sheet = Image.new("RGB", (max(widths + [400]), line + gap + sum(heights)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((gap, 2), title, fill="black")
    y = line + gap
    for (caption, vids), height in zip(strips, heights, strict=True):
        draw.text((gap, y), caption, fill="black")
        x = gap
        for tiles in vids:
            for tile in tiles:
                sheet.paste(tile, (x, y + line))
                x += tile.width
            x += gap
        y += height
    return sheet
