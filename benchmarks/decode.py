"""Decode throughput: decord vs PyAV on the same real videos and the same sampled frames, side by side.

    python benchmarks/decode.py [--repeats 3]

Uses ../shared/data (videoalign-examples, unifiedreward-wan, odd-encodings), skipping files that decord
is not safe for. Prints per-backend seconds per video and the PyAV/decord time ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _videos() -> list[Path]:
    files = sorted((SHARED / "videoalign-examples" / "videos").glob("*.mp4"))
    files += sorted((SHARED / "unifiedreward-wan" / "videos").rglob("*.mp4"))[:6]
    files += sorted((SHARED / "odd-encodings").rglob("*.mp4"))
    return files


def run(repeats: int = 3, num_frames: int | None = None, target_fps: float = 2.0) -> list[dict]:
    """Time both backends on every video decord can handle; returns one row per setting."""
    from videoalign_ray.data.video import VideoDecodeError, load_video

    rows = []
    usable = []
    for f in _videos():
        try:
            load_video(f, backend="decord", num_frames=num_frames, target_fps=target_fps)
            usable.append(f)
        except VideoDecodeError:
            continue
    times: dict[str, list[float]] = {"decord": [], "pyav": []}
    for f in usable:
        for backend in ("decord", "pyav"):
            best = min(_time(lambda f=f, b=backend: load_video(f, backend=b, num_frames=num_frames,
                                                                target_fps=target_fps)) for _ in range(repeats))
            times[backend].append(best)
    label = f"{num_frames} frames" if num_frames else f"{target_fps:g} fps"
    d, p = sum(times["decord"]), sum(times["pyav"])
    rows.append({"benchmark": f"decode {len(usable)} videos, {label}", "decord_s": d, "pyav_s": p,
                 "pyav/decord": p / d if d else float("nan"),
                 "median_video_s_decord": statistics.median(times["decord"]) if usable else float("nan")})
    return rows


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"needs ../shared/data at {SHARED}")
    for row in run(args.repeats, target_fps=2.0) + run(args.repeats, num_frames=16):
        print(" | ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
