"""A procedural text-to-video world with known ground truth: the built-in default dataset.

A prompt names a colour, a shape and a motion ("a red circle moving left to right"). A video renders a
shape on a plain background with three independent quality knobs in [0, 1] (1 = perfect):
- ``vq`` (visual quality): blur and pixel noise grow as vq falls;
- ``mq`` (motion quality): trajectory jitter and frame drops grow as mq falls;
- ``ta`` (text alignment): the colour drifts from the prompt's toward another one as ta falls (linear),
  below 0.3 the direction is reversed and below 0.15 the shape is the other one.
Preference labels per dimension come from the knob gaps (a gap under ``tie_margin`` is ``same``).
Deterministic by seed.

Two grammars (``world``): ``classic`` (the default: 4 colours x 2 shapes x 4 motions = 32 prompts, 8 held out)
and ``large`` (8 colours x 2 shapes x 8 motions, diagonals included = 128 prompts, 48 held out) for experiments
whose confidence intervals over held-out prompts must be narrow. A scene renders and scores against its own
grammar's palette (the "other" colour of a drifting or mis-coloured video is one of its world's colours), so the
classic world renders and scores exactly as before the large one existed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from videoalign_ray.runtime.fileio import atomic_path

COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square")
MOTIONS = {"left to right": (1, 0), "right to left": (-1, 0), "top to bottom": (0, 1), "bottom to top": (0, -1)}
# the large grammar's extra colours (RGB; each >= 70 apart from every other colour and > 120 from the background)
# and diagonal motions (screen axes: x right, y down)
EXTRA_COLORS = {"purple": (150, 50, 200), "orange": (245, 140, 20), "cyan": (30, 200, 210), "pink": (240, 120, 190)}
EXTRA_MOTIONS = {"top left to bottom right": (1, 1), "bottom right to top left": (-1, -1),
                 "top right to bottom left": (-1, 1), "bottom left to top right": (1, -1)}
PALETTE = {**COLORS, **EXTRA_COLORS}
DIRECTIONS = {**MOTIONS, **EXTRA_MOTIONS}
BACKGROUND = (235, 235, 235)


@dataclass(frozen=True)
class Grammar:
    """The words a world's prompts combine: colour x shape x motion, and the share held out of training."""

    colors: tuple[str, ...]
    shapes: tuple[str, ...]
    motions: tuple[str, ...]
    heldout_fraction: float


WORLDS = {
    "classic": Grammar(tuple(COLORS), SHAPES, tuple(MOTIONS), 0.25),
    "large": Grammar(tuple(PALETTE), SHAPES, tuple(DIRECTIONS), 0.375),
}


def grammar(world: str) -> Grammar:
    """The :class:`Grammar` of ``world`` (``classic`` or ``large``).

    Raises:
        ValueError: an unknown world.
    """
    if world not in WORLDS:
        raise ValueError(f"unknown synthetic world {world!r}; choose one of {sorted(WORLDS)}")
    return WORLDS[world]


@dataclass(frozen=True)
class Scene:
    """What a prompt asks for; ``world`` names the grammar whose palette it renders and scores against."""

    color: str
    shape: str
    motion: str
    world: str = "classic"

    @property
    def palette(self) -> dict[str, tuple[int, int, int]]:
        """The colours of this scene's world (name -> RGB)."""
        return {c: PALETTE[c] for c in grammar(self.world).colors}

    @property
    def prompt(self) -> str:
        return f"a {self.color} {self.shape} moving {self.motion}"


def travel_px(size: int) -> float:
    """How far (pixels) a shape moves over a whole clip of a ``size`` x ``size`` world video."""
    return size - 2 * (size * 0.16 + 1)


def all_scenes(world: str = "classic") -> list[Scene]:
    """Every prompt of ``world`` in a fixed order: classic 32 (4 colours x 2 shapes x 4 motions), large 128."""
    g = grammar(world)
    return [Scene(c, s, m, world) for c in g.colors for s in g.shapes for m in g.motions]


def split_scenes(heldout_fraction: float | None = None, seed: int = 0,
                 world: str = "classic") -> tuple[list[Scene], list[Scene]]:
    """Disjoint (train, held-out) prompt lists of ``world``; every colour, shape and motion still occurs in train.

    ``heldout_fraction``: default the world's (classic 0.25 = 8 of 32, large 0.375 = 48 of 128).
    """
    g = grammar(world)
    scenes = all_scenes(world)
    frac = g.heldout_fraction if heldout_fraction is None else heldout_fraction
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        order = rng.permutation(len(scenes))
        n_held = max(1, round(frac * len(scenes)))
        held = [scenes[i] for i in order[:n_held]]
        train = [scenes[i] for i in order[n_held:]]
        if all({getattr(s, a) for s in train} == set(v) for a, v in
               (("color", g.colors), ("shape", g.shapes), ("motion", g.motions))):
            return train, held
    raise RuntimeError("no split keeps every attribute in train")


def scene_index(world: str = "classic") -> dict[str, Scene]:
    """Prompt text -> :class:`Scene` for every prompt of ``world``."""
    return {s.prompt: s for s in all_scenes(world)}


def _blur(frame: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return frame
    out = frame.astype(np.float32)
    k = 2 * radius + 1
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        p = np.pad(out, pad, mode="edge")
        c = np.cumsum(p, axis=axis, dtype=np.float32)
        c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
        out = (np.take(c, range(k, c.shape[axis]), axis=axis) - np.take(c, range(0, c.shape[axis] - k), axis=axis)) / k
    return out


def render(
    scene: Scene, *, vq: float = 1.0, mq: float = 1.0, ta: float = 1.0, num_frames: int = 16, size: int = 32,
    seed: int = 0,
) -> np.ndarray:
    """Render uint8 frames ``(num_frames, size, size, 3)`` of ``scene`` with the given quality knobs."""
    rng = np.random.default_rng(seed)
    (dx, dy), shape, palette = DIRECTIONS[scene.motion], scene.shape, scene.palette
    wrong = [c for c in palette if c != scene.color][rng.integers(len(palette) - 1)]
    color = ta * np.array(palette[scene.color], np.float32) + (1 - ta) * np.array(palette[wrong], np.float32)
    if ta < 0.3:  # wrong direction
        dx, dy = -dx, -dy
    if ta < 0.15:  # and wrong shape
        shape = SHAPES[1 - SHAPES.index(shape)]
    radius = size * 0.16
    margin = radius + 1  # travel_px(size) = size - 2 * margin
    path = np.linspace(0.0, 1.0, num_frames)
    jitter = (1.0 - mq) * size * 0.25
    if mq < 0.6:  # frame drops: hold positions
        hold = rng.random(num_frames) < (0.6 - mq)
        for i in range(1, num_frames):
            if hold[i]:
                path[i] = path[i - 1]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    frames = np.empty((num_frames, size, size, 3), np.float32)
    for i, s in enumerate(path):
        pos = margin + s * (size - 2 * margin)
        cx = pos if dx > 0 else size - pos if dx < 0 else size / 2
        cy = pos if dy > 0 else size - pos if dy < 0 else size / 2
        cx += rng.normal(0, jitter) if jitter else 0.0
        cy += rng.normal(0, jitter) if jitter else 0.0
        if shape == "circle":
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        else:
            mask = (np.abs(xx - cx) <= radius) & (np.abs(yy - cy) <= radius)
        img = np.empty((size, size, 3), np.float32)
        img[:] = BACKGROUND
        img[mask] = color
        img = _blur(img, int(round((1.0 - vq) * 3)))
        img += rng.normal(0, (1.0 - vq) * 40.0, img.shape)
        frames[i] = img
    return np.clip(frames, 0, 255).round().astype(np.uint8)


def _label(a: float, b: float, tie_margin: float) -> str:
    if abs(a - b) < tie_margin:
        return "same"
    return "A" if a > b else "B"


def make_preference_dataset(
    out_dir: str | Path, *, num_pairs: int = 24, num_frames: int = 16, size: int = 32, fps: int = 8,
    tie_margin: float = 0.15, seed: int = 0, scenes: list[Scene] | None = None, name: str = "pairs",
    levels: tuple[float, ...] = (0.2, 0.5, 0.8, 1.0), vary: str | None = None,
) -> Path:
    """Write ``num_pairs`` pairs of mp4s plus ``<name>.csv`` (VideoAlign format) into ``out_dir``.

    Each video draws its three knobs from ``levels``; labels per dimension compare the knobs (a gap under
    ``tie_margin`` is ``same``); MOS columns are ``1 + 4 * knob``. ``scenes`` restricts the prompts (e.g. the
    train half of :func:`split_scenes`). ``vary`` (``"VQ"``, ``"MQ"`` or ``"TA"``): only that knob differs
    between A and B, the other two are shared (a controlled pair). Returns the CSV path; skips the work when the CSV already exists
    (it is written last, atomically).
    """
    from videoalign_ray.data.video import write_mp4

    out_dir = Path(out_dir)
    csv_path = out_dir / f"{name}.csv"
    if csv_path.is_file():
        return csv_path
    rng = np.random.default_rng(seed)
    scenes = scenes or all_scenes()
    rows = []
    for i in range(num_pairs):
        scene = scenes[rng.integers(len(scenes))]
        knobs = [{d: float(rng.choice(levels)) for d in ("vq", "mq", "ta")} for _ in range(2)]
        if vary is not None:
            for d in ("vq", "mq", "ta"):
                if d != vary.lower():
                    knobs[1][d] = knobs[0][d]
        paths = []
        for side, k in zip("AB", knobs, strict=True):
            rel = f"videos/{name}{i:04d}_{side}.mp4"
            frames = render(scene, num_frames=num_frames, size=size, seed=seed * 100_003 + 2 * i + (side == "B"), **k)
            write_mp4(out_dir / rel, frames, fps=fps, lossless=True)
            paths.append(rel)
        rows.append({
            "path_A": paths[0], "path_B": paths[1], "prompt": scene.prompt,
            "VQ": _label(knobs[0]["vq"], knobs[1]["vq"], tie_margin),
            "MQ": _label(knobs[0]["mq"], knobs[1]["mq"], tie_margin),
            "TA": _label(knobs[0]["ta"], knobs[1]["ta"], tie_margin),
            "fps_A": fps, "num_frames_A": num_frames, "fps_B": fps, "num_frames_B": num_frames,
            **{f"MOS_{s}_{d.upper()}": round(1 + 4 * k[d], 2) for s, k in zip("AB", knobs, strict=True) for d in k},
        })
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return csv_path


def train_val_tables(out_dir: str | Path, data: str | None, val_data: str | None, *, train_pairs: int,
                     val_pairs: int, seed: int) -> tuple[str, str]:
    """The (train, validation) tables of a reward-model job: the given ones, or the world's defaults, written
    under ``out_dir``: ``train_pairs`` pairs on the train prompts and ``val_pairs`` on the held-out prompts of
    :func:`split_scenes` (disjoint prompts)."""
    train, held = split_scenes(seed=seed)
    data = data or str(make_preference_dataset(out_dir, num_pairs=train_pairs, scenes=train, seed=seed,
                                               name="train"))
    val_data = val_data or str(make_preference_dataset(out_dir, num_pairs=val_pairs, scenes=held, seed=seed + 1,
                                                       name="val"))
    return data, val_data
