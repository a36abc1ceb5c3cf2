"""Memory model of a Flow-DPO micro-step on Wan2.1-T2V-1.3B (real architecture, no weights needed), on CPU.

    python benchmarks/memory_model.py [--frames 81 --height 480 --width 832] [--gpu-gib 80] [--workers 8]
    python benchmarks/memory_model.py --cuda   # on a GPU: the same step for real, torch.cuda.max_memory_allocated

1. Counts the peak live tensor bytes of one micro-step (videoalign_ray.flow.memory.step_memory: the project's
   compute_loss under FakeTensorMode, LoRA r=64, bf16) at several small token counts, with and without gradient
   checkpointing, and fits activations = a + b * tokens (least squares) per mode.
2. Extrapolates the fit to the requested clip and compares it with the count at that size (fake tensors make
   the full size cheap to count directly).
3. Prints GiB per worker for micro-batches 1..8 at that size and which fit ``--gpu-gib`` with 15% headroom.
With ``--cuda`` it also runs one real step on the GPU (random bf16 weights) at ``--cuda-frames`` and prints the
measured peak beside the model's number for the same step.
"""

from __future__ import annotations

import argparse
import time

SMALL_CLIPS = [(9, 240, 416), (17, 240, 416), (17, 480, 832), (33, 480, 832)]  # 1,170 .. 14,040 tokens per video


def cuda_step(config: dict, frames: int, height: int, width: int, micro_batch: int, checkpointing: bool) -> float:
    """Peak GiB allocated by one real Flow-DPO micro-step on the GPU, weights included (random bf16)."""
    import torch
    from diffusers import WanTransformer3DModel

    from videoalign_ray.flow.memory import LATENT_CHANNELS, _build, dpo_step_config, latent_size
    from videoalign_ray.flow.train_loop import compute_loss

    torch.cuda.reset_peak_memory_stats()
    with torch.device("cuda"):
        model = _build(WanTransformer3DModel, config, 64)
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    f, h, w = latent_size(frames, height, width)
    batch = {k: torch.randn(micro_batch, LATENT_CHANNELS, f, h, w, device="cuda") for k in ("chosen", "rejected")}
    batch["prompt_embeds"] = torch.randn(micro_batch, 512, config["text_dim"], device="cuda", dtype=torch.bfloat16)
    cfg = dpo_step_config(micro_batch, 64)
    base = torch.cuda.memory_allocated()
    loss, _ = compute_loss(model, None, batch, cfg, torch.Generator().manual_seed(0), "cuda", torch.bfloat16)
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del model, batch, loss
    torch.cuda.empty_cache()
    return base / 2**30, (peak - base) / 2**30


def main() -> None:
    from videoalign_ray.flow.memory import WAN21_T2V_1_3B, fit_line, step_memory, tokens_per_video

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--gpu-gib", type=float, default=80.0)
    ap.add_argument("--workers", type=int, default=8, help="ZeRO-2 ranks sharing the optimizer states")
    ap.add_argument("--cuda", action="store_true", help="also measure real steps on this machine's GPU")
    ap.add_argument("--cuda-frames", type=int, default=33)
    args = ap.parse_args()
    cfg = WAN21_T2V_1_3B
    t0 = time.perf_counter()
    print(f"Wan2.1-T2V-1.3B, LoRA r=64, bf16, ZeRO-2 over {args.workers} ranks; one micro-batch = 1 pair\n")
    print("| tokens/video | activations GiB (no ckpt) | activations GiB (ckpt) |")
    print("|---|---|---|")
    fits = {}
    rows = []
    for clip in SMALL_CLIPS:
        tok = tokens_per_video(cfg, *clip)
        plain = step_memory(cfg, num_frames=clip[0], height=clip[1], width=clip[2], micro_batch=1,
                            gradient_checkpointing=False, world_size=args.workers)
        ckpt = step_memory(cfg, num_frames=clip[0], height=clip[1], width=clip[2], micro_batch=1,
                           gradient_checkpointing=True, world_size=args.workers)
        rows.append((tok, plain.activations, ckpt.activations))
        print(f"| {tok:,} | {plain.activations:.3f} | {ckpt.activations:.3f} |")
    for i, mode in ((1, "no ckpt"), (2, "ckpt")):
        a, b = fit_line([r[0] for r in rows], [r[i] for r in rows])
        fits[mode] = (a, b)
        print(f"fit ({mode}): activations = {a:.3f} GiB + {b * 2**30 / 1024:.1f} KiB x tokens/video "
              f"({b * 2**30 / 1024 / 2 / cfg['num_layers']:.1f} KiB per token per block, 2 videos per pair)")
    tok = tokens_per_video(cfg, args.frames, args.height, args.width)
    print(f"\nat {args.frames}x{args.height}x{args.width} ({tok:,} tokens/video):")
    print("| micro-batch | ckpt | weights | trainable | activations (fit) | activations (counted) | total GiB | "
          f"fits {args.gpu_gib:.0f} GiB -15% |")
    print("|---|---|---|---|---|---|---|---|")
    for checkpointing in (False, True):
        for mb in (1, 2, 4, 8):
            if not checkpointing and mb > 2:
                continue  # each pair adds ~120 GiB without checkpointing; counting more says nothing new
            m = step_memory(cfg, num_frames=args.frames, height=args.height, width=args.width, micro_batch=mb,
                            gradient_checkpointing=checkpointing, world_size=args.workers)
            a, b = fits["ckpt" if checkpointing else "no ckpt"]
            print(f"| {mb} | {'on' if checkpointing else 'off'} | {m.weights:.1f} | {m.trainable:.2f} | "
                  f"{mb * (a + b * tok):.1f} | {m.activations:.1f} | {m.total:.1f} | "
                  f"{'yes' if m.fits(args.gpu_gib) else 'no'} |")
    print(f"\n(model built and counted in {time.perf_counter() - t0:.0f} s on CPU)")
    if args.cuda:
        import torch

        print(f"\nGPU check on {torch.cuda.get_device_name()} at {args.cuda_frames}x{args.height}x{args.width}:")
        print("| micro-batch | ckpt | model: activations GiB | measured: peak above weights GiB | ratio |")
        print("|---|---|---|---|---|")
        for checkpointing in (True, False):
            for mb in (1, 2) if checkpointing else (1,):
                m = step_memory(cfg, num_frames=args.cuda_frames, height=args.height, width=args.width,
                                micro_batch=mb, gradient_checkpointing=checkpointing, world_size=args.workers)
                weights, measured = cuda_step(cfg, args.cuda_frames, args.height, args.width, mb, checkpointing)
                print(f"| {mb} | {'on' if checkpointing else 'off'} | {m.activations:.2f} | {measured:.2f} | "
                      f"{measured / m.activations:.3f} |  (weights on GPU {weights:.2f} GiB, model "
                      f"{m.weights + 2 * m.trainable_params / 2**30:.2f})")


if __name__ == "__main__":
    main()
