"""Decode cost: the package's loaders against plain decord and PyAV loops on the same frames, side by side.

    python benchmarks/decode.py [--repeats 3]

Uses the real videos of ../shared/data (videoalign-examples, unifiedreward-wan, odd-encodings) that decord is
safe for. For each setting every video is decoded at the same distinct frame indices by:

- ``plain decord``: ``decord.VideoReader(path).get_batch(indices)``, nothing else;
- ``plain PyAV``: open, decode in order, convert the wanted frames to RGB;
- ``load_video``: the package's loader (probe with limits, sampling, decord-first with PyAV fallback);
- for the reward model's 2 fps setting also ``decode_for_reward`` (``load_video`` + resize to the 448x448
  pixel budget), the same with the float resize it used before (``float resize``), and plain decord resizing
  inside the decoder (``decord+resize``).

Prints seconds (best of ``--repeats`` rounds per video, the loaders taking turns, summed) and each loader's ratio to the plain loop of the
backend it decodes with (``load_video`` picks decord on these files; ``load_video pyav`` forces PyAV).
Goal (issue 12): ``load_video`` and ``decode_for_reward`` at most 1.1x the plain loop (wall time). ``cpu``: the
process's CPU seconds (all threads), best of the rounds, and the same ratio: the loaders overlap decord's open
with the probe and the resize with decoding on idle cores, which shortens the wall time, not the CPU time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _videos() -> list[Path]:
    files = sorted((SHARED / "videoalign-examples" / "videos").glob("*.mp4"))
    files += sorted((SHARED / "unifiedreward-wan" / "videos").rglob("*.mp4"))[:6]
    files += sorted((SHARED / "odd-encodings").rglob("*.mp4"))
    return files


def _plain_decord(path: Path, indices: list[int], size: tuple[int, int] | None = None) -> np.ndarray:
    import decord

    kw = {"height": size[0], "width": size[1]} if size else {}
    return decord.VideoReader(str(path), **kw).get_batch(indices).asnumpy()


def _plain_pyav(path: Path, indices: list[int]) -> np.ndarray:
    import av

    wanted, out = set(indices), []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for i, frame in enumerate(c.decode(s)):
            if i in wanted:
                out.append(frame.to_ndarray(format="rgb24"))
            if i >= indices[-1]:
                break
    return np.stack(out)


def _float_resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """The resize ``transforms._resize`` used before (float round trip), kept here for the side-by-side."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _loaders(f: Path, v, spec, num_frames: int | None, target_fps: float | None) -> dict:
    """The loaders to time on one video (``v``: its decode, for the frame indices and the target size)."""
    from videoalign_ray.data.transforms import smart_resize
    from videoalign_ray.data.video import load_video
    from videoalign_ray.reward.pipeline import decode_for_reward

    idx = np.unique(v.indices).tolist()
    size = smart_resize(v.info.height, v.info.width, spec.factor, spec.min_pixels, spec.max_pixels)
    loaders = {
        "plain decord": lambda: _plain_decord(f, idx),
        "plain PyAV": lambda: _plain_pyav(f, idx),
        "load_video": lambda: load_video(f, num_frames=num_frames, target_fps=target_fps),
        "load_video pyav": lambda: load_video(f, num_frames=num_frames, target_fps=target_fps, backend="pyav"),
    }
    if num_frames is None:  # the reward model's setting: fps sampling and the pixel budget
        loaders["decode_for_reward"] = lambda: decode_for_reward(str(f), spec)
        loaders["float resize"] = lambda: _float_resize(load_video(f, target_fps=target_fps).distinct, *size)
        loaders["decord+resize"] = lambda: _plain_decord(f, idx, size)
    return loaders


def run(repeats: int = 3, num_frames: int | None = None, target_fps: float | None = 2.0) -> dict:
    """Time every loader on every decord-safe video; returns summed seconds per loader and the ratios."""
    from videoalign_ray.data.video import VideoDecodeError, load_video
    from videoalign_ray.reward.pipeline import FrameSpec

    spec = FrameSpec()
    totals: dict[str, float] = {}
    cpu: dict[str, float] = {}
    count = 0
    for f in _videos():
        try:
            v = load_video(f, backend="decord", num_frames=num_frames, target_fps=target_fps)
        except VideoDecodeError:
            continue
        count += 1
        loaders = _loaders(f, v, spec, num_frames, target_fps)
        best = dict.fromkeys(loaders, float("inf"))
        best_cpu = dict.fromkeys(loaders, float("inf"))
        for _ in range(repeats):  # round-robin: the machine's speed drifts by +-10% over minutes here
            for name, fn in loaders.items():
                wall, used = _time(fn)
                best[name], best_cpu[name] = min(best[name], wall), min(best_cpu[name], used)
        for name, t in best.items():
            totals[name] = totals.get(name, 0.0) + t
            cpu[name] = cpu.get(name, 0.0) + best_cpu[name]
    label = f"{num_frames} frames" if num_frames else f"{target_fps:g} fps + 448x448 budget"
    ratios = {k: (v / totals[BASELINE[k]], BASELINE[k]) for k, v in totals.items() if k in BASELINE}
    cpu_ratios = {k: v / cpu[BASELINE[k]] for k, v in cpu.items() if k in BASELINE}
    return {"setting": f"{count} videos, {label}", "seconds": totals, "ratios": ratios, "cpu_seconds": cpu,
            "cpu_ratios": cpu_ratios}


# Each loader against the plain loop of the backend it decodes with (``load_video`` is decord-first).
BASELINE = {"load_video": "plain decord", "load_video pyav": "plain PyAV", "decode_for_reward": "plain decord",
            "float resize": "plain decord", "decord+resize": "plain decord"}


def _time(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one call."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"needs ../shared/data at {SHARED}")
    for res in (run(args.repeats, num_frames=16, target_fps=None), run(args.repeats, target_fps=2.0)):
        print(f"## {res['setting']}")
        for name, s in res["seconds"].items():
            ratio, base = res["ratios"].get(name, (None, ""))
            cpu_s, cpu_ratio = res["cpu_seconds"][name], res["cpu_ratios"].get(name)
            wall = f"   x{ratio:.2f} of {base}" if ratio else ""
            print(f"  {name:18s} {s:7.3f} s{wall:25s}   cpu {cpu_s:6.3f} s" + (f" x{cpu_ratio:.2f}" if cpu_ratio else ""))


if __name__ == "__main__":
    main()
