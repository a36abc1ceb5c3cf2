"""Does Flow-NRG steer what the user weights ask for? Weight sweeps on the synthetic world (known ground truth).

For each dimension d and weight level ``l``, every held-out prompt is sampled with the same seeds, guided
with ``lambda = l * e_d``; level 0 is the unguided sample. Ground-truth scores of dimension d should rise
with ``l`` (paper Table 5 in miniature).
"""

from __future__ import annotations

import numpy as np

from videoalign_ray.synthetic.evaluate import DIMS, win_rate
from videoalign_ray.synthetic.scorers import score_video
from videoalign_ray.synthetic.world import Scene


def guidance_sweep(
    transformer, text_encoder, vae, guide, scenes: list[Scene], *, samples_per_prompt: int, seed: int,
    scale: float, levels: tuple[float, ...] = (0.0, 0.5, 1.0), num_frames: int, height: int, width: int,
    steps: int = 20, batch: int = 32, max_guidance_factor: float = 10.0,
) -> dict:
    """Returns ``{dim: {"levels": [...], "mean": [GT mean of dim per level], "win_rate_vs_unguided": [(w, lo, hi)
    per level], "monotone": bool}, "unguided_mean": {dim: x}, "n": N}``."""
    from videoalign_ray.pipelines.generate import sample_batch

    prompts = [s.prompt for s in scenes for _ in range(samples_per_prompt)]
    scene_of = [s for s in scenes for _ in range(samples_per_prompt)]
    seeds = [seed * 100_000 + i for i in range(len(prompts))]
    kw = dict(num_frames=num_frames, height=height, width=width, steps=steps, shift=1.0,
              max_guidance_factor=max_guidance_factor)

    def scores(weights) -> np.ndarray:
        rows = []
        for i in range(0, len(prompts), batch):
            vids = sample_batch(transformer, text_encoder, vae, prompts[i : i + batch], seeds[i : i + batch],
                                guide=guide if any(weights) else None, weights=weights,
                                guidance_scale=scale if any(weights) else 0.0, **kw)
            rows += [[score_video(v, scene_of[i + j])[d] for d in DIMS] for j, v in enumerate(vids)]
        return np.array(rows)

    base = scores((0.0, 0.0, 0.0))
    result: dict = {"n": len(prompts), "unguided_mean": {d: float(base[:, k].mean()) for k, d in enumerate(DIMS)}}
    for k, d in enumerate(DIMS):
        means, wins = [], []
        for level in levels:
            s = base if level == 0 else scores(tuple(level if j == k else 0.0 for j in range(3)))
            means.append(float(s[:, k].mean()))
            wins.append(win_rate(s[:, k], base[:, k], prompts))
        result[d] = {"levels": list(levels), "mean": means, "win_rate_vs_unguided": wins,
                     "monotone": all(a < b for a, b in zip(means, means[1:], strict=False))}
    return result


def sweep_table(results: dict[str, dict]) -> str:
    """Markdown: one row per (guide, dimension): GT mean per weight level, win rate at the top level."""
    first = next(iter(results.values()))
    levels = first[DIMS[0]]["levels"]
    head = ("| guide | dim | " + " | ".join(f"GT mean, weight {lv:g}" for lv in levels)
            + f" | win rate {levels[-1]:g} vs unguided | monotone |")
    lines = [head, "|" + "---|" * (len(levels) + 4)]
    for name, res in results.items():
        for d in DIMS:
            r = res[d]
            w, lo, hi = r["win_rate_vs_unguided"][-1]
            lines.append(f"| {name} | {d} | " + " | ".join(f"{m:.3f}" for m in r["mean"])
                         + f" | {w:.2f} [{lo:.2f}, {hi:.2f}] | {'yes' if r['monotone'] else 'no'} |")
    return "\n".join(lines)
