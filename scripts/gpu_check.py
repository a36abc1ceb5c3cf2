"""The GPU check: what a first GPU run of the real-preset path costs, measured, in one table (< 8 min on one 80 GB GPU).

    bash scripts/gpu_check.sh             # on a GPU machine: real sizes, random bf16 weights
    bash scripts/gpu_check.sh --dry-run   # the same code at tiny sizes on CPU (CI runs it so it never rots)

Parts (each prints one row; a part whose libraries are missing says so and is skipped):

1. ``flow_dpo_step``: Wan2.1-T2V-1.3B's architecture (random bf16 weights, LoRA r=64, gradient checkpointing), one
   Flow-DPO micro-step (1 pair, 81x480x832: reference pass + policy forward and backward) through the project's
   ``compute_loss``: peak GiB beside ``flow.memory.step_memory``'s prediction for the same step (weights +
   LoRA weights and grads + activations; no optimizer state, none is built here), s/step and the model-FLOPs
   utilisation it implies (analytic FLOPs: 2 x parameters x tokens + attention, 8 video forwards per step).
2. ``sample``: one 81x480x832 video, 50 UniPC steps (WanPipeline's scheduler, flow shift 3.0) with CFG through the
   project's ``sample_latents``, then the Wan VAE decode (random fp32 VAE): s/video.
3. ``videoreward``: VideoReward on Qwen2-VL-2B's widths (random bf16 weights), 16-frame clips (8 s at 2 fps) at
   448x448: videos/s in batches of 4.
4. ``ray_deepspeed``: where Ray and DeepSpeed are installed, ``jobs/flow_dpo.py`` (tiny preset) on the GPU with
   Ray Train + DeepSpeed ZeRO-2 over NCCL; 5. ``online``: ``jobs/online_dpo.py``'s default on the GPU.

The model-level parts import only torch, transformers, peft, diffusers and the project's own modules (no Ray,
no pydantic): the GPU machines we borrow lack Ray, DeepSpeed, MLflow and pydantic.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# dense bf16 peak FLOP/s by device name (vendor datasheets, without sparsity)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
TINY_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=16, out_channels=16,
                text_dim=64, freq_dim=32, ffn_dim=128, num_layers=2, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64)
WAN_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True], dropout=0.0)  # AutoencoderKLWan's Wan2.1 config
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                temperal_downsample=[False, True, True], dropout=0.0)


def _device():
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def transformer_flops(config: dict, tokens: int, text_tokens: int) -> float:
    """Forward FLOPs of one video through a Wan transformer: 2 x (matmul parameters) x tokens, plus self-attention
    (4 x tokens^2 x width per layer: scores and values) and cross-attention (4 x tokens x text x width)."""
    width = config["num_attention_heads"] * config["attention_head_dim"]
    layers = config["num_layers"]
    per_layer = 4 * width * width + 2 * width * width + 2 * config["text_dim"] * width + 2 * width * config["ffn_dim"]
    return (2 * layers * per_layer * tokens + layers * 4 * tokens * tokens * width
            + layers * 4 * tokens * text_tokens * width)


def part_flow_dpo_step(dry: bool) -> dict:
    import torch
    from diffusers import WanTransformer3DModel

    from videoalign_ray.flow.memory import (
        LATENT_CHANNELS,
        WAN21_T2V_1_3B,
        _build,
        dpo_step_config,
        latent_size,
        step_memory,
        tokens_per_video,
    )
    from videoalign_ray.flow.train_loop import compute_loss

    config, (frames, height, width) = (TINY_WAN, (9, 64, 64)) if dry else (WAN21_T2V_1_3B, (81, 480, 832))
    text_tokens = 16 if dry else 512
    device = _device()
    predicted = step_memory(config, num_frames=frames, height=height, width=width, micro_batch=1,
                            text_tokens=text_tokens, lora_rank=64, gradient_checkpointing=True, world_size=1)
    no_optimizer = predicted.weights + predicted.activations + predicted.trainable * 4 / 16  # bf16 weights + grads
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.device(device):
        model = _build(WanTransformer3DModel, config, 64)
    model.enable_gradient_checkpointing()
    model.train()
    f, h, w = latent_size(frames, height, width)
    g = torch.Generator().manual_seed(0)
    batch = {k: torch.randn(1, LATENT_CHANNELS, f, h, w, generator=g).to(device) for k in ("chosen", "rejected")}
    batch["prompt_embeds"] = torch.randn(1, text_tokens, config["text_dim"], generator=g).to(device, torch.bfloat16)
    cfg = dpo_step_config(1, 64)
    times = []
    for _ in range(1 if dry else 3):  # the first step warms kernels up and is not timed (unless dry)
        _sync()
        t = time.perf_counter()
        loss, _ = compute_loss(model, None, batch, cfg, torch.Generator().manual_seed(0), device, torch.bfloat16)
        loss.backward()
        model.zero_grad(set_to_none=True)
        _sync()
        times.append(time.perf_counter() - t)
    step_s = times[-1] if dry else sum(times[1:]) / len(times[1:])
    flops = 8 * transformer_flops(config, tokens_per_video(config, frames, height, width), text_tokens)
    peak = _peak_flops()
    row = {"part": "flow_dpo_step", "clip": f"{frames}x{height}x{width}", "s_per_step": round(step_s, 3),
           "loss": round(float(loss.detach()), 5), "predicted_gib_no_optimizer": round(no_optimizer, 2),
           "predicted_gib_with_adamw": round(predicted.total, 2), "tflops_per_step": round(flops / 1e12, 1),
           "mfu": round(flops / step_s / peak, 3) if peak else None}
    if device.type == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    del model, batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def part_sample(dry: bool) -> dict:
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

    from videoalign_ray.flow.memory import WAN21_T2V_1_3B, latent_size
    from videoalign_ray.flow.sampling import WAN_UNIPC_DEFAULTS, sample_latents

    config, (frames, height, width) = (TINY_WAN, (9, 64, 64)) if dry else (WAN21_T2V_1_3B, (81, 480, 832))
    steps, text_tokens = (2 if dry else 50), (16 if dry else 512)
    device = _device()
    with torch.device(device):
        model = WanTransformer3DModel(**config).eval()
        vae = AutoencoderKLWan(**(TINY_VAE if dry else WAN_VAE)).eval()
    keep = set(model._keep_in_fp32_modules or [])  # as from_pretrained(torch_dtype=bf16) loads it for WanPipeline
    for name, p in model.named_parameters():
        p.data = p.data.to(torch.float32 if keep & set(name.split(".")) else torch.bfloat16)
    f, h, w = latent_size(frames, height, width)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 16, f, h, w, generator=g)
    embeds, negative = (torch.randn(1, text_tokens, config["text_dim"], generator=g) for _ in range(2))
    _sync()
    t = time.perf_counter()
    latents = sample_latents(model, embeds, noise, num_steps=steps, guidance_scale=5.0, negative_embeds=negative,
                             scheduler=UniPCMultistepScheduler(**WAN_UNIPC_DEFAULTS))
    _sync()
    sample_s = time.perf_counter() - t
    t = time.perf_counter()
    with torch.no_grad():
        video = vae.decode(latents.to(device)).sample
    _sync()
    decode_s = time.perf_counter() - t
    del model, vae
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"part": "sample", "clip": f"{frames}x{height}x{width}", "steps": steps, "cfg": 5.0,
            "s_per_video": round(sample_s + decode_s, 2), "denoise_s": round(sample_s, 2),
            "vae_decode_s": round(decode_s, 2), "frames_out": int(video.shape[2])}


def part_videoreward(dry: bool) -> dict:
    import torch

    from videoalign_ray.reward.memory import _build, _inputs, video_grid

    frames, size, batch = (2, 56, 2) if dry else (16, 448, 4)
    device = _device()
    model = _build(1 if dry else 28, 1 if dry else 32, lora_rank=64).to(device).eval()
    inputs = {k: v.to(device) for k, v in _inputs(video_grid(frames, size, size), 64, batch).items()}
    times = []
    with torch.no_grad():
        for _ in range(1 if dry else 4):
            _sync()
            t = time.perf_counter()
            model(**inputs)
            _sync()
            times.append(time.perf_counter() - t)
    s = times[-1] if dry else sum(times[1:]) / len(times[1:])
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"part": "videoreward", "clip": f"{frames} frames {size}x{size}", "batch": batch,
            "videos_per_s": round(batch / s, 2)}


def _job_part(name: str, args: list[str], dry: bool) -> dict:
    """Run a job on the GPU in a subprocess (it needs Ray, DeepSpeed, pydantic and MLflow): its exit code and the
    last summary line, or the error's tail; skipped without those libraries or in a dry run."""
    missing = [m for m in ("ray", "deepspeed", "pydantic", "mlflow") if importlib.util.find_spec(m) is None]
    if missing:
        return {"part": name, "skipped": f"not installed: {', '.join(missing)}"}
    if dry:
        return {"part": name, "skipped": "dry run (the test suite runs the jobs on CPU)"}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, *args, "--overwrite"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), "")
    tail = (proc.stderr or proc.stdout)[-400:] if proc.returncode else line[:400]
    return {"part": name, "s": round(time.perf_counter() - t, 1), "rc": proc.returncode, "tail": tail}


def part_ray_deepspeed(dry: bool) -> dict:
    return _job_part("ray_deepspeed", ["jobs/flow_dpo.py", "--output-dir", "/tmp/gpu_check/flow_dpo", "--max-steps",
                                       "4", "--num-workers", "1", "--zero-stage", "2", "--num-samples", "1"], dry)


def part_online(dry: bool) -> dict:
    return _job_part("online", ["jobs/online_dpo.py", "--output-dir", "/tmp/gpu_check/online", "--rounds", "1"], dry)


PARTS = {"flow_dpo_step": part_flow_dpo_step, "sample": part_sample, "videoreward": part_videoreward,
         "ray_deepspeed": part_ray_deepspeed, "online": part_online}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (CI)")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ",".join(PARTS))
    ap.add_argument("--out", help="also write the rows as JSON here")
    args = ap.parse_args()
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run on CPU", file=sys.stderr)
        return 2
    print(f"gpu_check on {device}, torch {torch.__version__}, dry run: {args.dry_run}", flush=True)
    rows, failed = [], False
    for name in [p.strip() for p in args.parts.split(",") if p.strip()]:
        t = time.perf_counter()
        try:
            row = PARTS[name](args.dry_run)
        except ImportError as exc:
            row = {"part": name, "skipped": f"import failed: {exc}"}
        except Exception as exc:  # noqa: BLE001 - a failed part is reported and the others still run
            row, failed = {"part": name, "error": f"{type(exc).__name__}: {exc}"[:400]}, True
        row["wall_s"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        print("| " + " | ".join(f"{k}={v}" for k, v in row.items()) + " |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"device": device, "dry_run": args.dry_run, "rows": rows}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
