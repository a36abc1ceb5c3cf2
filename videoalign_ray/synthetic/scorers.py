"""Ground-truth scorers for the synthetic world: VQ, MQ and TA measured from pixels alone.

They score any video of the world, rendered or generated, given the prompt's :class:`Scene`. Each score is
in [0, 1], higher is better. Inputs are uint8 frames ``(T, H, W, 3)``.
- VQ: pixel noise (residual after a 3x3 median filter) and edge blur (share of half-tone pixels).
- MQ: smoothness x coverage. Smoothness: how far the shape's centroid track strays from a straight
  constant-speed line (jitter, jumps, frame drops), relative to the frame size. Coverage: the distance that
  fitted line travels over the clip relative to the world's travel (``travel_px``), capped at 1, so a shape
  that stands still (perfectly "smooth") does not score as good motion.
- TA: 0.7 x colour agreement (the shape's mean colour between the prompt's colour, 1, and the nearest
  other colour of the scene's world, 0) + 0.2 x direction agreement
  (cosine of the centroid's net motion with the prompt's) + 0.1 x shape agreement (fill ratio of the bounding box:
  circle pi/4, square 1).
"""

from __future__ import annotations

import numpy as np

from videoalign_ray.synthetic.world import BACKGROUND, DIRECTIONS, Scene, travel_px

_BG = np.array(BACKGROUND, np.float32)


def _median3(frames: np.ndarray) -> np.ndarray:
    """3x3 spatial median per frame, per channel; ``(T, H, W, C)`` float32."""
    p = np.pad(frames, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = frames.shape[1:3]
    stack = np.stack([p[:, i : i + h, j : j + w] for i in range(3) for j in range(3)])
    return np.median(stack, axis=0)


def _foreground(clean: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """Per frame: pixels farther from the background than half the frame's largest distance (the half-maximum
    contour, which a symmetric blur leaves in place), in frames whose largest distance exceeds ``threshold``."""
    dist = np.linalg.norm(clean - _BG, axis=-1)
    peak = dist.reshape(len(dist), -1).max(axis=1)[:, None, None]
    return (dist > 0.5 * peak) & (peak > threshold)


def _centroids(mask: np.ndarray) -> np.ndarray:
    """Centroid (x, y) per frame in pixels, NaN where the frame has no foreground."""
    t, h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.full((t, 2), np.nan, np.float32)
    for i in range(t):
        m = mask[i]
        if m.sum() >= 2:
            out[i] = xx[m].mean(), yy[m].mean()
    return out


def score_vq(frames: np.ndarray) -> float:
    x = frames.astype(np.float32)
    clean = _median3(x)
    noise = float(np.abs(x - clean).mean())
    dist = np.linalg.norm(clean - _BG, axis=-1)
    fg = dist > 60.0
    halftone = (dist > 15.0) & ~fg
    blur = float(halftone.sum() / max(fg.sum(), 1))
    return float(np.clip(1.0 - noise / 35.0 - 0.25 * min(blur, 2.0), 0.0, 1.0))


def score_mq(frames: np.ndarray) -> float:
    c = _centroids(_foreground(_median3(frames.astype(np.float32))))
    ok = ~np.isnan(c[:, 0])
    size = frames.shape[1]
    if ok.sum() < 3:
        return 0.0
    t = np.arange(len(c), dtype=np.float32)[ok]
    resid, slope = [], []
    for d in range(2):
        coef = np.polyfit(t, c[ok, d], 1)
        resid.append(c[ok, d] - np.polyval(coef, t))
        slope.append(coef[0])
    rms = float(np.sqrt(np.mean(np.square(resid))))
    missing = 1.0 - ok.mean()
    travelled = float(np.hypot(*slope)) * (len(c) - 1)
    coverage = min(travelled / travel_px(size), 1.0)
    # smoothness: 1 for a straight constant-speed track, 0.5 at an RMS deviation of 5% of the frame
    return float(coverage * (1.0 - missing) / (1.0 + rms / (0.05 * size)))


def score_ta(frames: np.ndarray, scene: Scene) -> float:
    clean = _median3(frames.astype(np.float32))
    mask = _foreground(clean)
    if mask.sum() < 4:
        return 0.0
    # colour from the shape's core (pixels at >= 80% of the frame's peak distance): blur mixes the rim with
    # the background
    dist = np.linalg.norm(clean - _BG, axis=-1)
    core = mask & (dist >= 0.8 * dist.reshape(len(dist), -1).max(axis=1)[:, None, None])
    mean_color = np.median(clean[core], axis=0)
    # relative distance: 1 at the prompt's colour, 0 at another palette colour (linear along a blend)
    palette = scene.palette
    d_right = float(np.linalg.norm(mean_color - np.array(palette[scene.color], np.float32)))
    d_other = min(float(np.linalg.norm(mean_color - np.array(v, np.float32))) for k, v in palette.items()
                  if k != scene.color)
    color = d_other / max(d_right + d_other, 1e-6)
    c = _centroids(mask)
    ok = ~np.isnan(c[:, 0])
    direction = 0.5
    if ok.sum() >= 2:
        first, last = c[ok][0], c[ok][-1]
        move = last - first
        want = np.array(DIRECTIONS[scene.motion], np.float32)
        want /= np.linalg.norm(want)
        norm = np.linalg.norm(move)
        if norm > 1e-3:
            direction = 0.5 * (1.0 + float(move @ want) / norm)
    fills = []
    for i in np.flatnonzero(mask.reshape(len(mask), -1).sum(1) >= 4):
        ys, xs = np.nonzero(mask[i])
        fills.append(mask[i].sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)))
    fill = float(np.median(fills)) if fills else 0.5
    # circle: pi/4 ~ 0.785, square: 1.0; map the fill ratio to agreement with the prompt's shape
    squareness = float(np.clip((fill - np.pi / 4) / (1 - np.pi / 4), 0.0, 1.0))
    shape = squareness if scene.shape == "square" else 1.0 - squareness
    return float(0.7 * color + 0.2 * direction + 0.1 * shape)


def score_video(frames: np.ndarray, scene: Scene) -> dict[str, float]:
    """All three ground-truth scores of one video: ``{"VQ", "MQ", "TA"}`` in [0, 1]."""
    return {"VQ": score_vq(frames), "MQ": score_mq(frames), "TA": score_ta(frames, scene)}
