"""Compare two generators on the synthetic world with the ground-truth scorers.

Both generators sample the same prompts with the same noise (seeds), so a per-sample comparison isolates
the effect of training. Win rate of A over B on a dimension = mean over samples of 1 (A scores higher),
0.5 (equal) or 0; its 95% interval is a bootstrap over prompts (the samples of one prompt are not
independent), or the Wilson interval when no prompt grouping is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from videoalign_ray.data.schema import DIMENSIONS
from videoalign_ray.synthetic.scorers import score_video
from videoalign_ray.synthetic.world import Scene

DIMS = DIMENSIONS


Z95 = 1.959964


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed on ``n`` samples; always inside [0, 1]."""
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def _outcomes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per paired sample: 1 where ``a`` scores higher, 0 where lower, 0.5 on a tie."""
    return np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))


def _cluster_sums(outcome: np.ndarray, clusters) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster (sorted by name): the sum of ``outcome`` and the sample count."""
    _, group = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
    return np.bincount(group, weights=outcome), np.bincount(group).astype(float)


def win_rate(a: np.ndarray, b: np.ndarray, clusters=None, *, n_boot: int = 2000,
             seed: int = 0) -> tuple[float, float, float]:
    """Win rate of ``a`` over ``b`` (paired scores, shape ``(N,)``; ties count 1/2) and its 95% interval.

    ``clusters`` (length N, e.g. each sample's prompt): percentile bootstrap that resamples whole clusters
    (``n_boot`` resamples, seeded), since samples of one prompt are correlated and N of them are not N
    independent trials. Without clusters, or with a single cluster: the Wilson score interval over N.
    Both intervals lie in [0, 1]. Returns ``(rate, lo, hi)``.

    Raises:
        ValueError: shapes differ or are empty, or ``clusters`` has another length.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired scores must have the same non-empty shape, got {a.shape} and {b.shape}")
    outcome = _outcomes(a, b)
    rate = float(outcome.mean())
    if clusters is None or len(set(clusters)) < 2:
        return (rate, *wilson_interval(rate, outcome.size))
    if len(clusters) != outcome.size:
        raise ValueError(f"clusters has {len(clusters)} entries for {outcome.size} samples")
    sums, counts = _cluster_sums(outcome, clusters)
    pick = np.random.default_rng(seed).integers(0, len(sums), size=(n_boot, len(sums)))
    rates = sums[pick].sum(1) / counts[pick].sum(1)
    lo, hi = np.percentile(rates, [2.5, 97.5])
    return rate, float(lo), float(hi)


@dataclass(frozen=True)
class Generator:
    """A model folder plus optional trained weights (a job's ``final/`` folder with ``adapter/`` or ``model/``)."""

    model_dir: str
    weights_dir: str | None = None

    def load(self, dtype: torch.dtype = torch.float32):
        """The transformer (policy or base) in ``dtype``, eval mode, on CPU."""
        from videoalign_ray.flow.generator import load_policy
        from videoalign_ray.flow.model import load_transformer

        if self.weights_dir:
            return load_policy(self.model_dir, self.weights_dir, dtype=dtype)
        return load_transformer(self.model_dir, dtype=dtype).eval()


def sample_world_videos(
    transformer, vae, text_encoder, prompts: list[str], seeds: list[int], *, num_frames: int, height: int,
    width: int, steps: int = 20, shift: float = 1.0, batch: int = 32,
) -> np.ndarray:
    """Sample ``len(prompts)`` videos (prompt i with noise seed ``seeds[i]``); uint8 ``(N, T, H, W, 3)``."""
    from videoalign_ray.flow.model import decode_latents
    from videoalign_ray.flow.sampling import latent_shape, sample_latents

    shape = latent_shape(vae.config, num_frames, height, width)
    out = []
    for i in range(0, len(prompts), batch):
        p, s = prompts[i : i + batch], seeds[i : i + batch]
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(x)) for x in s])
        latents = sample_latents(transformer, text_encoder.encode(p), noise, num_steps=steps, shift=shift)
        out.append(decode_latents(vae, latents))
    return np.concatenate(out)


def frame_grid(rows: list[np.ndarray], scale: int = 3):
    """A PIL image: one row per video (uint8 ``(T, H, W, 3)``), frames left to right, 2-px white gaps."""
    from PIL import Image

    t, h, w, _ = rows[0].shape
    gap = 2
    canvas = np.full((len(rows) * (h + gap), t * (w + gap), 3), 255, np.uint8)
    for r, video in enumerate(rows):
        for f in range(t):
            canvas[r * (h + gap) : r * (h + gap) + h, f * (w + gap) : f * (w + gap) + w] = video[f]
    img = Image.fromarray(canvas)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def _held_out_seeds(scenes: list[Scene], samples_per_prompt: int, seed: int) -> tuple[list[Scene], list[int]]:
    """Each scene repeated ``samples_per_prompt`` times, and the noise seed of every sample."""
    scene_of = [s for s in scenes for _ in range(samples_per_prompt)]
    return scene_of, [seed * 100_000 + i for i in range(len(scene_of))]


def score_generators(
    generators: dict[str, Generator], scenes: list[Scene], *, samples_per_prompt: int, seed: int, num_frames: int,
    height: int, width: int, max_text_tokens: int, steps: int = 20, shift: float = 1.0,
) -> tuple[dict[str, list[dict]], dict[str, np.ndarray]]:
    """Sample every scene ``samples_per_prompt`` times from each generator, with the same noise seeds for all of
    them, and score every video with the ground truth.

    All generators must share one base folder (VAE and text encoder are loaded once from the first). Loads the
    models on this process's device (bf16 on CUDA): call it in a Ray task (:func:`score_generators_remote`).

    Returns ``(rows, videos)``: per name, one row per sample ``{"prompt", "seed", "VQ", "MQ", "TA"}`` (the same
    prompt/seed order for every name) and the uint8 videos ``(N, T, H, W, 3)``.
    """
    from videoalign_ray.flow.model import TextEncoder, load_vae
    from videoalign_ray.runtime.placement import compute_dtype, worker_device

    device = worker_device()
    dtype = compute_dtype(device)
    scene_of, seeds = _held_out_seeds(scenes, samples_per_prompt, seed)
    prompts = [s.prompt for s in scene_of]
    first = next(iter(generators.values()))
    vae = load_vae(first.model_dir).to(device)
    text = TextEncoder(first.model_dir, max_text_tokens, device)
    kw = dict(num_frames=num_frames, height=height, width=width, steps=steps, shift=shift)
    rows, videos = {}, {}
    for name, gen in generators.items():
        with torch.no_grad():
            videos[name] = sample_world_videos(gen.load(dtype).to(device), vae, text, prompts, seeds, **kw)
        rows[name] = [{"prompt": sc.prompt, "seed": seeds[i], **score_video(videos[name][i], sc)}
                      for i, sc in enumerate(scene_of)]
    return rows, videos


def paired_comparison(policy_rows: list[dict], reference_rows: list[dict]) -> dict:
    """Win rates of one generator's scored samples over another's, paired by (prompt, seed).

    Rows as :func:`score_generators` returns them (same order). Returns ``{"n", "prompts", "win_rate": {dim:
    (rate, lo, hi)}, "prompt_sd": {dim: sd}, "policy_mean": {dim: x}, "reference_mean": {...}, "scores":
    [per-sample rows]}``; the interval is the bootstrap over prompts of :func:`win_rate`; ``prompt_sd`` the
    standard deviation of the per-prompt win rates (what :func:`prompts_for_half_width` needs).

    Raises:
        ValueError: the two lists are not the same samples (prompt and seed, in order).
    """
    if [(r["prompt"], r["seed"]) for r in policy_rows] != [(r["prompt"], r["seed"]) for r in reference_rows]:
        raise ValueError("paired comparison needs the same (prompt, seed) samples in the same order on both sides")
    rows = [{"prompt": p["prompt"], "seed": p["seed"], **{f"reference_{d}": r[d] for d in DIMS},
             **{f"policy_{d}": p[d] for d in DIMS}} for p, r in zip(policy_rows, reference_rows, strict=True)]
    clusters = [x["prompt"] for x in rows]
    pol = {d: np.array([x[f"policy_{d}"] for x in rows]) for d in DIMS}
    ref = {d: np.array([x[f"reference_{d}"] for x in rows]) for d in DIMS}

    def prompt_sd(d: str) -> float:
        sums, counts = _cluster_sums(_outcomes(pol[d], ref[d]), clusters)
        per = sums / counts  # each prompt's win rate
        return float(np.std(per, ddof=1)) if len(per) > 1 else 0.0

    return {
        "n": len(rows),
        "prompts": len(set(clusters)),
        "win_rate": {d: win_rate(pol[d], ref[d], clusters) for d in DIMS},
        "prompt_sd": {d: prompt_sd(d) for d in DIMS},
        "policy_mean": {d: float(pol[d].mean()) for d in DIMS},
        "reference_mean": {d: float(ref[d].mean()) for d in DIMS},
        "scores": rows,
    }


def prompts_for_half_width(prompt_sd: float, half_width: float = 0.1, z: float = Z95) -> int:
    """Held-out prompts needed for a 95% interval of +-``half_width`` on a win rate whose per-prompt win rates
    have standard deviation ``prompt_sd`` (normal approximation of the mean over prompts: ``(z sd / h)^2``)."""
    return max(2, math.ceil((z * prompt_sd / half_width) ** 2))


def compare_generators(
    policy: Generator, reference: Generator, scenes: list[Scene], *, samples_per_prompt: int, seed: int,
    num_frames: int, height: int, width: int, max_text_tokens: int, steps: int = 20, shift: float = 1.0,
    grid: bool = False,
) -> dict:
    """Sample every scene ``samples_per_prompt`` times from both generators with shared seeds and score them.

    Loads the models on this process's device (``runtime.placement.worker_device``; bf16 on CUDA): call it
    through :func:`compare_generators_remote`, which runs it in a Ray task.

    Returns :func:`paired_comparison`'s dict (``n``, ``win_rate`` per dimension with its 95% interval,
    ``policy_mean``, ``reference_mean``, ``scores``), plus ``grid_png`` (PNG bytes of a frame grid: reference row
    above policy row per prompt) when ``grid``.
    """
    rows, videos = score_generators(
        {"reference": reference, "policy": policy}, scenes, samples_per_prompt=samples_per_prompt, seed=seed,
        num_frames=num_frames, height=height, width=width, max_text_tokens=max_text_tokens, steps=steps, shift=shift)
    result = paired_comparison(rows["policy"], rows["reference"])
    if grid:
        import io

        picks = [i * samples_per_prompt for i in range(min(len(scenes), 6))]
        buf = io.BytesIO()
        frame_grid([v for i in picks for v in (videos["reference"][i], videos["policy"][i])]).save(buf, format="PNG")
        result["grid_png"] = buf.getvalue()
    return result


def score_generators_remote(generators: dict[str, Generator], scenes: list[Scene], *, use_gpu: bool,
                            timeout_s: float = 7200.0, **kwargs) -> dict[str, list[dict]]:
    """:func:`score_generators` in a Ray task (one GPU with ``use_gpu``, else one CPU); returns its rows only
    (the videos stay in the task).

    Raises:
        TimeoutError: no result within ``timeout_s`` seconds.
    """
    from videoalign_ray.runtime.placement import run_model_task

    rows, _ = run_model_task(_score_rows, generators, scenes, use_gpu=use_gpu, what="held-out generator scoring",
                             timeout_s=timeout_s, **kwargs)
    return rows


def _score_rows(generators, scenes, **kwargs) -> dict[str, list[dict]]:
    return score_generators(generators, scenes, **kwargs)[0]


def compare_generators_remote(policy: Generator, reference: Generator, scenes: list[Scene], *, use_gpu: bool,
                              timeout_s: float = 7200.0, grid_path: str | Path | None = None, **kwargs) -> dict:
    """:func:`compare_generators` in a Ray task (one GPU with ``use_gpu``, else one CPU); the driver writes the
    grid to ``grid_path`` (when given). The result gains ``worker`` (pid, node, gpu_ids, device of the task).

    Raises:
        TimeoutError: no result within ``timeout_s`` seconds.
    """
    from videoalign_ray.runtime.fileio import write_files
    from videoalign_ray.runtime.placement import run_model_task

    result, worker = run_model_task(compare_generators, policy, reference, scenes, grid=grid_path is not None,
                                    use_gpu=use_gpu, what="held-out generator comparison", timeout_s=timeout_s,
                                    **kwargs)
    png = result.pop("grid_png", None)
    if grid_path is not None:
        write_files(Path(grid_path).parent, {Path(grid_path).name: png})
    return {**result, "worker": worker}


def format_table(result: dict, policy_name: str = "policy", reference_name: str = "reference") -> str:
    """A plain-text table: per dimension, win rate [95% CI] and the two mean scores."""
    lines = [f"{'dim':<4} {'win rate ' + policy_name + ' vs ' + reference_name:<40} "
             f"{'mean ' + policy_name:>14} {'mean ' + reference_name:>16}"]
    for d in DIMS:
        w, lo, hi = result["win_rate"][d]
        lines.append(f"{d:<4} {f'{w:.3f} [{lo:.3f}, {hi:.3f}]':<40} {result['policy_mean'][d]:>14.3f} "
                     f"{result['reference_mean'][d]:>16.3f}")
    lines.append(f"(n = {result['n']} paired samples)")
    return "\n".join(lines)


@torch.no_grad()
def implicit_dpo_accuracy(
    policy, chosen: torch.Tensor, rejected: torch.Tensor, prompt_embeds: torch.Tensor, *, draws: int = 8,
    seed: int = 0, batch: int = 32,
) -> float:
    """Held-out implicit accuracy of a LoRA policy: the share of pairs whose DPO ``inside`` term, averaged over
    ``draws`` (t, eps) draws, is positive (the policy lowers the chosen error more than the rejected one,
    relative to the reference = the same network with adapters off).

    ``chosen``/``rejected``: latents ``(N, C, F, h, w)``; ``prompt_embeds``: ``(N, L, D)``.
    """
    from videoalign_ray.flow.losses import per_sample_mse
    from videoalign_ray.flow.schedule import add_noise, sample_t, to_model_timestep, velocity_target

    def err(x0, eps, t, text):
        v = policy(hidden_states=add_noise(x0, eps, t), timestep=to_model_timestep(t), encoder_hidden_states=text,
                   return_dict=False)[0]
        return per_sample_mse(v, velocity_target(x0, eps))

    n = chosen.shape[0]
    total = torch.zeros(n)
    for d in range(draws):
        g = torch.Generator().manual_seed(seed * 1000 + d)
        t = sample_t(n, generator=g).to(chosen.device)  # drawn on CPU: the same draws on any device
        eps = torch.randn(chosen.shape, generator=g).to(chosen.device)
        for i in range(0, n, batch):
            s = slice(i, i + batch)
            args_w = (chosen[s], eps[s], t[s], prompt_embeds[s])
            args_l = (rejected[s], eps[s], t[s], prompt_embeds[s])
            pw, pl = err(*args_w), err(*args_l)
            policy.disable_adapters()
            try:
                rw, rl = err(*args_w), err(*args_l)
            finally:
                policy.enable_adapters()
            total[s] += -((pw - rw) - (pl - rl)).float().cpu()
    return float((total > 0).float().mean())
