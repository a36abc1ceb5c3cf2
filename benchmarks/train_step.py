"""Ray Train workers against a plain loop: seconds per Flow-DPO step, and the time from start to the first step.

    python benchmarks/train_step.py [--steps 40]

Runs the default Flow-DPO job (tiny-world preset, the bundled synthetic pairs) in fresh processes, each with a
private local Ray (``RAY_ADDRESS=local``), as:

- 1 worker with ``--cpus-per-worker 1`` (Ray's default reservation, the behaviour before ``--cpus-per-worker``),
- 1 worker with the default (the free CPUs: all cores of this machine),
- 2 workers with the default (the CPUs shared out),

and, in this process, a plain PyTorch loop: the same model, LoRA, loss (``flow.train_loop.compute_loss``) and
micro-batch shape, ``torch.optim.AdamW``, no Ray, no DeepSpeed, torch's default threads. Prints the mean
seconds per optimizer step after the first (``time/mean_step_s``, rank 0), its ratio to the plain loop
(for 2 workers: per pair, since they train twice the pairs per step), and the job's startup stages in seconds
from the job's start (Ray up, data ready, first step), plus the process's own import time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_job(out: Path, steps: int, workers: int, cpus: int | None) -> dict:
    """One Flow-DPO job in a fresh process; returns its summary plus ``process_s`` (wall time)."""
    cmd = [sys.executable, str(ROOT / "jobs" / "flow_dpo.py"), "--output-dir", str(out), "--max-steps", str(steps),
           "--num-workers", str(workers), "--checkpoint-every", str(steps), "--num-samples", "0"]
    if cpus:
        cmd += ["--cpus-per-worker", str(cpus)]
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.time() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    summary["process_s"] = wall
    summary["launch_to_job_s"] = summary_started(out) - t0
    return summary


def summary_started(out: Path) -> float:
    """``JobRun.started_unix`` is not in the summary; the MLflow run's start time is within ms of it."""
    import mlflow

    summary = json.loads((out / "summary.json").read_text())
    client = mlflow.MlflowClient(summary["mlflow_tracking_uri"])
    return client.get_run(summary["mlflow_run_id"]).info.start_time / 1000.0


def plain_loop(out: Path, steps: int, micro_batch: int) -> float:
    """Mean seconds per step (after the first) of the same Flow-DPO step with no Ray and no DeepSpeed."""
    import torch
    from safetensors.torch import load_file

    from videoalign_ray.flow.train_loop import LoopConfig, _build_model, compute_loss
    from videoalign_ray.pipelines.flow_dpo import FlowDPOConfig

    cfg = FlowDPOConfig()
    latents, text = None, None
    for f in sorted((out / "cache").rglob("*.safetensors")):
        t = load_file(f)["value"]
        if t.ndim == 4 and latents is None:
            latents = t
        elif t.ndim == 2 and text is None:
            text = t
    if latents is None or text is None:
        raise SystemExit(f"{out}/cache: no latents / prompt embedding to take the shapes from")
    from videoalign_ray.flow.model import PRESETS, resolve_model_dir

    model_dir = resolve_model_dir(cfg.preset, cfg.model_path, out, cfg.seed)
    preset = PRESETS[cfg.preset]
    loop = LoopConfig(
        model_dir=str(model_dir), objective="dpo", finetune="lora", lora_rank=preset.lora_rank,
        lora_alpha=2.0 * preset.lora_rank, lr=preset.lr, grad_clip=cfg.grad_clip, 
        objective_args={"beta": cfg.beta, "beta_schedule": cfg.beta_schedule}, t_sampling=cfg.t_sampling, logit_mean=cfg.logit_mean,
        logit_std=cfg.logit_std, t_shift=cfg.t_shift, micro_batch=micro_batch, grad_accum=1, zero_stage=0,
        bf16=False, max_steps=steps, checkpoint_every=steps, log_every=1, seed=cfg.seed, mlflow_tracking_uri="",
        mlflow_run_id="", fault_marker="")
    policy, reference = _build_model(loop)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=loop.lr)
    batch = {"chosen": latents.expand(micro_batch, *latents.shape).clone(),
             "rejected": latents.flip(-1).expand(micro_batch, *latents.shape).clone(),
             "prompt_embeds": text.expand(micro_batch, *text.shape).clone()}
    t_first = None
    for step in range(steps):
        loss, _ = compute_loss(policy, reference, batch, loop, torch.Generator().manual_seed(step), "cpu",
                               torch.float32)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), loop.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step == 0:
            t_first = time.perf_counter()
    return (time.perf_counter() - t_first) / (steps - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="va-bench-step-") as tmp:
        for name, workers, cpus in (("1 worker, 1 CPU (Ray's default)", 1, 1), ("1 worker, default CPUs", 1, None),
                                    ("2 workers, default CPUs", 2, None)):
            s = run_job(Path(tmp) / name.replace(" ", "_").replace(",", ""), args.steps, workers, cpus)
            m = s["final_metrics"]
            rows.append((name, workers, m["time/mean_step_s"], int(m["time/torch_threads"]), s))
        micro = rows[0][4]["pairs_per_worker"] and min(2, rows[0][4]["pairs_per_worker"])
        import torch

        plain = plain_loop(Path(tmp) / rows[0][0].replace(" ", "_").replace(",", ""), args.steps, micro)
        print(f"plain PyTorch loop ({torch.get_num_threads()} threads, micro-batch {micro}): {plain:.4f} s/step")
        for name, workers, step_s, threads, s in rows:
            st = s["startup_s"]
            print(f"{name:34s} {threads} thread(s): {step_s:.4f} s/step, x{step_s / plain / workers:.2f} of the "
                  f"plain loop per pair | startup: process->job {s['launch_to_job_s']:.1f} s, Ray {st['ray']:.1f} s, "
                  f"data {st['data']:.1f} s, first step {st['first_step']:.1f} s; process {s['process_s']:.1f} s")


if __name__ == "__main__":
    main()
