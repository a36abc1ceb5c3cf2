"""The Ray Train per-worker loop for flow-matching alignment (Flow-DPO; SFT as the same loop, w = 1).

Each worker reads its own pre-split shard (``get_dataset_shard(f"shard_{rank}")``), so the pairs a rank
sees are fixed by the seed and the data: a resumed run replays exactly the batches an uninterrupted run
would have seen. Noise and timesteps come from a generator seeded by (seed, step, rank) for the same reason.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from videoalign_ray.flow.losses import flow_dpo_loss, per_sample_mse
from videoalign_ray.flow.schedule import add_noise, sample_t, to_model_timestep, velocity_target

METRIC_KEYS = ("loss", "implicit_acc", "inside_mean", "chosen_gap", "rejected_gap", "kl_proxy")


@dataclass(frozen=True)
class LoopConfig:
    """Everything a worker needs; plain values so it crosses process boundaries as a dict."""

    model_dir: str
    objective: str  # "dpo" | "sft" (chosen only) | "pretrain" (chosen and rejected alike)
    finetune: str  # "lora" | "full"
    lora_rank: int
    lora_alpha: float
    lr: float
    weight_decay: float
    grad_clip: float
    beta: float
    beta_schedule: str
    t_sampling: str
    logit_mean: float
    logit_std: float
    t_shift: float
    micro_batch: int
    grad_accum: int
    zero_stage: int
    bf16: bool
    max_steps: int
    checkpoint_every: int
    log_every: int
    seed: int
    mlflow_tracking_uri: str
    mlflow_run_id: str
    fault_marker: str
    fail_at_step: int | None = None
    warmup_steps: int = 0


def _step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 10_007 + rank) % (2**63))


def _build_model(cfg: LoopConfig):
    from videoalign_ray.flow.model import add_lora, load_transformer

    torch.manual_seed(cfg.seed)
    policy = load_transformer(cfg.model_dir)
    reference = None
    if cfg.finetune == "lora":
        add_lora(policy, cfg.lora_rank, cfg.lora_alpha, cfg.seed)
    elif cfg.objective == "dpo":  # full fine-tuning: a frozen copy is the reference
        reference = load_transformer(cfg.model_dir).eval().requires_grad_(False)
    policy.train()
    return policy, reference


def _batches(shard, micro_batch: int, seed: int, epoch: int, skip: int):
    """Yield (index in epoch, batch) for one epoch of this rank's shard, after ``skip`` batches."""
    it = shard.iter_torch_batches(
        batch_size=micro_batch, drop_last=True, local_shuffle_buffer_size=4 * micro_batch,
        local_shuffle_seed=seed * 7919 + epoch,
    )
    for i, batch in enumerate(it):
        if i >= skip:
            yield i, batch


def _velocity(model, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    return model(hidden_states=x_t, timestep=to_model_timestep(t), encoder_hidden_states=text, return_dict=False)[0]


def compute_loss(engine, reference, batch: dict, cfg: LoopConfig, gen: torch.Generator, device, dtype):
    """One micro-batch: shared t and eps per pair, policy vs reference errors, Flow-DPO (or SFT) loss.

    ``engine`` is the DeepSpeed engine (or the bare model); ``reference`` a frozen copy, or None for LoRA,
    where the reference is the same network with its adapters disabled. ``batch``: ``chosen`` /
    ``rejected`` latents ``(B, C, F, h, w)`` and ``prompt_embeds`` ``(B, L, D)``. ``gen`` draws ``t`` (B,)
    and then ``eps`` (B, C, F, h, w), in that order.
    """
    module = getattr(engine, "module", engine)
    x_w = batch["chosen"].to(device=device, dtype=torch.float32)
    x_l = batch["rejected"].to(device=device, dtype=torch.float32)
    text = batch["prompt_embeds"].to(device=device, dtype=dtype)
    b = x_w.shape[0]
    t = sample_t(b, mode=cfg.t_sampling, logit_mean=cfg.logit_mean, logit_std=cfg.logit_std, shift=cfg.t_shift,
                 generator=gen).to(device)
    eps = torch.randn(x_w.shape, generator=gen).to(device)
    if cfg.objective in ("sft", "pretrain"):
        x0 = x_w
        if cfg.objective == "pretrain":  # every video is a sample of the world, good or bad
            t2 = sample_t(b, mode=cfg.t_sampling, logit_mean=cfg.logit_mean, logit_std=cfg.logit_std,
                          shift=cfg.t_shift, generator=gen).to(device)
            eps2 = torch.randn(x_l.shape, generator=gen).to(device)
            x0, t, eps, text = torch.cat([x_w, x_l]), torch.cat([t, t2]), torch.cat([eps, eps2]), torch.cat([text, text])
        pred = _velocity(engine, add_noise(x0, eps, t).to(dtype), t.to(dtype), text)
        loss = per_sample_mse(pred, velocity_target(x0, eps)).mean()
        return loss, {"loss": loss.detach()}
    x_t = torch.cat([add_noise(x_w, eps, t), add_noise(x_l, eps, t)]).to(dtype)
    tt = torch.cat([t, t]).to(dtype)
    target = torch.cat([velocity_target(x_w, eps), velocity_target(x_l, eps)])
    text2 = torch.cat([text, text])
    with torch.no_grad():
        if reference is None:  # LoRA: the reference is the same network with its adapters disabled
            module.disable_adapters()
            try:
                ref_pred = _velocity(engine, x_t, tt, text2)
            finally:
                module.enable_adapters()
        else:
            ref_pred = _velocity(reference, x_t, tt, text2)
    pred = _velocity(engine, x_t, tt, text2)
    pol_err, ref_err = per_sample_mse(pred, target), per_sample_mse(ref_pred, target)
    loss, metrics = flow_dpo_loss(
        pol_err[:b], pol_err[b:], ref_err[:b], ref_err[b:], beta=cfg.beta, t=t, beta_schedule=cfg.beta_schedule
    )
    metrics["loss"] = loss.detach()
    return loss, metrics


def _maybe_inject_fault(cfg: LoopConfig, step: int, rank: int, world: int) -> None:
    if cfg.fail_at_step is None or step != cfg.fail_at_step or rank != (1 if world > 1 else 0):
        return
    marker = Path(cfg.fault_marker)
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"killed rank {rank} at step {step}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def _mean_over_workers(values: dict[str, torch.Tensor], keys) -> dict[str, float]:
    import torch.distributed as dist

    vec = torch.stack([values.get(k, torch.tensor(float("nan"))).float().cpu() for k in keys])
    if dist.is_available() and dist.is_initialized():
        vec = vec.to("cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(vec)
        vec = vec.cpu() / dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, vec, strict=True)}


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point (``TorchTrainer(train_loop_per_worker=...)``)."""
    import ray.train
    from ray.train import Checkpoint

    from videoalign_ray.train.strategy import deepspeed_config, init_engine, load_checkpoint, save_checkpoint

    cfg = LoopConfig(**config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    lora = cfg.finetune == "lora"

    policy, reference = _build_model(cfg)
    if reference is not None:
        reference.to(device=device, dtype=dtype)
    ds_cfg = deepspeed_config(
        micro_batch=cfg.micro_batch, grad_accum=cfg.grad_accum, zero_stage=cfg.zero_stage, lr=cfg.lr,
        weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, bf16=cfg.bf16, world_size=world,
        warmup_steps=cfg.warmup_steps,
    )
    engine = init_engine(policy, ds_cfg)

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_checkpoint(engine, Path(d), lora=lora)
        if rank == 0:
            print(f"[videoalign] resumed from checkpoint at step {state['step']}", flush=True)

    tracker = None
    if rank == 0 and cfg.mlflow_run_id:
        from videoalign_ray.tracking import Tracker

        tracker = Tracker.attach(cfg.mlflow_tracking_uri, cfg.mlflow_run_id)

    shard = ray.train.get_dataset_shard(f"shard_{rank}")
    adapter_config = {"r": cfg.lora_rank, "lora_alpha": cfg.lora_alpha, "finetune": cfg.finetune,
                      "base_model": cfg.model_dir}
    step, epoch, skip = state["step"], state["epoch"], state["batch_in_epoch"]
    progress = None
    if rank == 0:
        from tqdm.auto import tqdm

        progress = tqdm(total=cfg.max_steps, initial=step, desc=cfg.objective,
                        unit="step", mininterval=2.0)
    last_metrics: dict[str, float] = {}
    micro = 0
    t_start = time.perf_counter()
    while step < cfg.max_steps:
        consumed = skip
        for idx, batch in _batches(shard, cfg.micro_batch, cfg.seed, epoch, skip):
            gen = _step_generator(cfg.seed, step * cfg.grad_accum + micro, rank)
            loss, metrics = compute_loss(engine, reference, batch, cfg, gen, device, dtype)
            engine.backward(loss)
            engine.step()
            consumed = idx + 1
            micro += 1
            if micro < cfg.grad_accum:
                continue
            micro = 0
            step += 1
            _maybe_inject_fault(cfg, step, rank, world)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                last_metrics = _mean_over_workers(metrics, METRIC_KEYS if cfg.objective == "dpo" else ("loss",))
                last_metrics["step_time_s"] = (time.perf_counter() - t_start) / cfg.log_every
                t_start = time.perf_counter()
                if tracker is not None:
                    tracker.log_metrics(last_metrics, step)
                if progress is not None:
                    progress.set_postfix(loss=f"{last_metrics['loss']:.4f}")
            if progress is not None:
                progress.update(1)
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                state = {"step": step, "epoch": epoch, "batch_in_epoch": consumed}
                with tempfile.TemporaryDirectory(prefix="va-ckpt-") as tmp:
                    save_checkpoint(engine, Path(tmp), state, lora=lora, rank=rank, adapter_config=adapter_config)
                    ray.train.report({"step": step, **last_metrics}, checkpoint=Checkpoint.from_directory(tmp))
            if step >= cfg.max_steps:
                break
        else:
            if consumed == skip and skip == 0:
                raise RuntimeError(f"rank {rank}: shard yields no full batch of {cfg.micro_batch} pairs")
            epoch, skip = epoch + 1, 0
            continue
        break
    if progress is not None:
        progress.close()
    if tracker is not None:
        tracker.close()


def loop_config_dict(cfg: LoopConfig) -> dict:
    """The dict form passed to ``TorchTrainer(train_loop_config=...)``."""
    return json.loads(json.dumps(asdict(cfg)))
