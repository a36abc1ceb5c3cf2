"""Flow-NRG cost: guided / unguided sampling time with the local latent-reward guide, side by side.

    python benchmarks/nrg_guidance.py [--latent-reward DIR] [--batch 8] [--steps 20] [--repeats 3]

Samples the same prompts and noise from the ``tiny-world`` base without guidance and with guidance by a
latent reward model of K = 1 and K = 2 copied blocks (or the given checkpoint), with and without CFG, and
prints seconds per batch and the guided / unguided ratio. Timing does not depend on the head's weights.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latent-reward", default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    from videoalign_ray.flow.model import PRESETS, TINY_WORLD_ASSET, TextEncoder, load_transformer, load_vae
    from videoalign_ray.flow.sampling import latent_shape, sample_latents
    from videoalign_ray.reward.latent import LatentRewardGuide, from_generator, load_latent_reward
    from videoalign_ray.synthetic.world import all_scenes

    preset = PRESETS["tiny-world"]
    transformer = load_transformer(TINY_WORLD_ASSET).eval()
    vae, text = load_vae(TINY_WORLD_ASSET), TextEncoder(TINY_WORLD_ASSET, preset.max_text_tokens)
    prompts = [s.prompt for s in all_scenes()[: args.batch]]
    embeds, negative = text.encode(prompts), text.encode([""] * len(prompts))
    shape = latent_shape(vae.config, preset.num_frames, preset.height, preset.width)
    noise = torch.randn((len(prompts), *shape), generator=torch.Generator().manual_seed(0))
    guides = {}
    if args.latent_reward:
        guides["checkpoint"] = LatentRewardGuide(load_latent_reward(args.latent_reward))
    else:
        for k in (1, 2):
            guides[f"K={k}"] = LatentRewardGuide(from_generator(TINY_WORLD_ASSET, k))
    n_blocks = len(transformer.blocks)
    print(f"tiny-world generator ({n_blocks} blocks), batch {args.batch}, {args.steps} Euler steps, "
          f"torch threads {torch.get_num_threads()}")

    def timed(**kw) -> float:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            sample_latents(transformer, embeds, noise, num_steps=args.steps, **kw)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    rows = []
    for cfg_scale in (1.0, 3.0):
        cfg_kw = {"guidance_scale": cfg_scale, "negative_embeds": negative} if cfg_scale > 1 else {}
        base = timed(**cfg_kw)
        rows.append((f"unguided{' + CFG' if cfg_kw else ''}", base, 1.0))
        for name, guide in guides.items():
            t = timed(reward_guide=guide, reward_weights=(0.1, 0.1, 0.8), reward_scale=1.0, **cfg_kw)
            rows.append((f"NRG {name}{' + CFG' if cfg_kw else ''}", t, t / base))
    print("\n| sampler | s / batch | time / unguided (same CFG) |\n|---|---|---|")
    for name, t, ratio in rows:
        print(f"| {name} | {t:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
