"""Memory model of a VideoReward training micro-step on Qwen2-VL-2B (real widths, random weights), on CPU.

    python benchmarks/memory_model_reward.py [--frames 16 --height 448 --width 448] [--gpu-gib 80] [--workers 8]

1. Runs one real bf16 micro-step (1 pair: both videos, BTT loss, backward; the paper's recipe: vision tower
   trained, LoRA r=64 on the LM, reward-token embedding rows, head) with 1-2 vision blocks and 1-2 LM layers
   at small clips, with and without gradient checkpointing, and fits per-block and per-layer activations
   linear in tokens (videoalign_ray.reward.memory.fit_layers).
2. Checks the fit against a direct count at a larger clip than any it was fitted on.
3. Prints GiB per worker at the requested clip (default: 8 s at VideoAlign's 2 fps, 448x448 budget) for
   1..8 pairs per micro-batch, and which fit ``--gpu-gib`` with 15% headroom.
"""

from __future__ import annotations

import argparse
import math
import time

FIT_GRIDS = [(1, 16, 16), (2, 16, 16), (2, 32, 32)]  # (t, h, w) patches: 256 .. 2,048 patches, 64 .. 512 tokens
CHECK_GRID = (4, 32, 32)  # 4,096 patches: twice the largest fitted clip


def main() -> None:
    from videoalign_ray.reward.memory import (
        fit_layers,
        llm_tokens,
        measured_peak,
        reward_step_memory,
        video_grid,
    )

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=16, help="sampled frames per video (8 s at 2 fps)")
    ap.add_argument("--height", type=int, default=448)
    ap.add_argument("--width", type=int, default=448)
    ap.add_argument("--gpu-gib", type=float, default=80.0)
    ap.add_argument("--workers", type=int, default=8, help="ZeRO-2 ranks sharing the optimizer states")
    args = ap.parse_args()
    t0 = time.perf_counter()
    print("VideoReward on Qwen2-VL-2B, LoRA r=64 on the LM, vision tower trained, bf16, "
          f"ZeRO-2 over {args.workers} ranks; 1 pair = 2 videos\n")
    fits = {}
    for ckpt in (False, True):
        fit, points = fit_layers(FIT_GRIDS, gradient_checkpointing=ckpt)
        fits[ckpt] = fit
        name = "ckpt" if ckpt else "no ckpt"
        for p in points:
            print(f"{name:7s} grid {p['grid']} ({p['patches']:,} patches, {p['tokens']:,} LM tokens): peak MiB "
                  f"1 block + 1 layer {p['peak_1_1'] / 2**20:.0f}, 2+1 {p['peak_2_1'] / 2**20:.0f}, "
                  f"1+2 {p['peak_1_2'] / 2**20:.0f}")
        print(f"{name:7s} fit: per vision block {fit.per_block[1] / 1024:.2f} KiB x patches "
              f"+ {fit.per_block[0] / 2**20:.1f} MiB; per LM layer {fit.per_layer[1] / 1024:.2f} KiB x tokens "
              f"+ {fit.per_layer[0] / 2**20:.1f} MiB; base {fit.base[1] / 1024:.1f} KiB x tokens "
              f"+ {fit.base[0] / 2**20:.1f} MiB")
        direct = measured_peak(1, 1, CHECK_GRID, gradient_checkpointing=ckpt)
        predicted = fit.activations(math.prod(CHECK_GRID), llm_tokens(CHECK_GRID, 64), 1, 1)
        print(f"{name:7s} check at grid {CHECK_GRID}: counted {direct / 2**20:.0f} MiB, fit {predicted / 2**20:.0f} "
              f"MiB (ratio {predicted / direct:.3f})\n")
    grid = video_grid(args.frames, args.height, args.width)
    print(f"at {args.frames} frames x {args.height}x{args.width} (grid {grid}: {math.prod(grid):,} patches, "
          f"{llm_tokens(grid, 64):,} LM tokens per video):")
    print(f"| pairs per micro-batch | ckpt | weights | trainable | activations | total GiB | fits {args.gpu_gib:.0f} "
          "GiB -15% |")
    print("|---|---|---|---|---|---|---|")
    for ckpt in (False, True):
        for pairs in (1, 2, 4, 8):
            m = reward_step_memory(fits[ckpt], num_frames=args.frames, height=args.height, width=args.width,
                                   world_size=args.workers)
            total = m.weights + m.trainable + pairs * m.activations  # activations grow with the pairs
            print(f"| {pairs} | {'on' if ckpt else 'off'} | {m.weights:.1f} | {m.trainable:.1f} | "
                  f"{pairs * m.activations:.1f} | {total:.1f} | {'yes' if total <= 0.85 * args.gpu_gib else 'no'} |")
    print(f"\n(params {m.params / 1e6:,.0f} M, trainable {m.trainable_params / 1e6:,.0f} M; "
          f"measured in {time.perf_counter() - t0:.0f} s on CPU)")


if __name__ == "__main__":
    main()
