"""The step driver shared by every Ray Train job: resume, deterministic batches, logging, checkpoints.

A job supplies a DeepSpeed engine and a ``step_fn(batch, generator) -> (loss, metrics)``; the driver owns the
rest, identically for every job:
- resume from ``ray.train.get_checkpoint()`` (engine state + data position),
- per-rank batches of the rank's own shard, reshuffled per epoch by a seeded shuffle that does not depend
  on timing; after a resume the batches already consumed in that epoch are skipped, so the run replays
  exactly what an uninterrupted one sees,
- a ``torch.Generator`` per micro-step seeded by (seed, step, rank) for noise and timesteps,
- metrics averaged over ranks every ``log_every`` steps, logged by rank 0 to MLflow,
- a checkpoint every ``checkpoint_every`` steps and at the end, reported with ``ray.train.report`` (each
  report blocks on Ray's health check, so metrics alone are never reported per step),
- optional fault injection for tests (``fail_at_step``).
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from videoalign_ray.runtime.key_table import dataset_shard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriverSpec:
    """The driver's knobs (a job's loop config passes its own values)."""

    max_steps: int
    micro_batch: int
    grad_accum: int
    seed: int
    log_every: int
    checkpoint_every: int
    mlflow_tracking_uri: str
    mlflow_run_id: str
    fault_marker: str
    fail_at_step: int | None
    desc: str
    job_started_unix: float = 0.0
    """``time.time()`` when the job started (0: unknown); rank 0 reports ``startup/first_step_s`` from it."""
    eval_every: int = 0
    """Steps between ``validate_fn`` calls (0: at each checkpoint)."""


@dataclass(frozen=True, kw_only=True)
class LoopCommon:
    """The fields every job's loop config shares (DeepSpeed engine knobs + the driver's), as plain values."""

    lr: float
    grad_clip: float
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
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.0
    gradient_checkpointing: bool = False
    cache_dir: str = ""
    """Tensor cache of the key rows (``<name>_key`` columns) the shards hold; "" when rows carry tensors."""
    job_started_unix: float = 0.0
    """``time.time()`` at the job's start, for the time-to-first-step metric (0: not measured)."""
    eval_every: int = 0
    """Steps between validations (0: at each checkpoint)."""
    def deepspeed_config(self, world_size: int) -> dict:
        """The DeepSpeed JSON config of these engine knobs (:func:`videoalign_ray.runtime.strategy.deepspeed_config`;
        the lr schedule spans ``max_steps``)."""
        from videoalign_ray.runtime.strategy import deepspeed_config

        return deepspeed_config(
            micro_batch=self.micro_batch, grad_accum=self.grad_accum, zero_stage=self.zero_stage, lr=self.lr,
            weight_decay=self.weight_decay, grad_clip=self.grad_clip, bf16=self.bf16, world_size=world_size,
            warmup_steps=self.warmup_steps, lr_schedule=self.lr_schedule, total_steps=self.max_steps,
            min_lr_ratio=self.min_lr_ratio,
        )

    def driver_spec(self, desc: str) -> DriverSpec:
        return DriverSpec(
            max_steps=self.max_steps, micro_batch=self.micro_batch, grad_accum=self.grad_accum, seed=self.seed,
            log_every=self.log_every, checkpoint_every=self.checkpoint_every,
            mlflow_tracking_uri=self.mlflow_tracking_uri, mlflow_run_id=self.mlflow_run_id,
            fault_marker=self.fault_marker, fail_at_step=self.fail_at_step, desc=desc,
            job_started_unix=self.job_started_unix, eval_every=self.eval_every,
        )


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator of one micro-step on one rank."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 10_007 + rank) % (2**63))


def _to_torch(batch: dict) -> dict:
    """Fixed-shape numeric columns become tensors; ragged (object) and string columns stay NumPy."""
    out = {}
    for k, v in batch.items():
        out[k] = torch.from_numpy(v) if isinstance(v, np.ndarray) and v.dtype.kind in "biuf" else v
    return out


def _batches(shard, micro_batch: int, seed: int, epoch: int, skip: int, window_batches: int = 4,
             load: Callable[[dict], dict] | None = None, prefetch: int = 4):
    """Yield (index in epoch, batch): the shard read in order, shuffled within windows of ``window_batches``
    micro-batches by a generator seeded with (seed, epoch, window). Unlike Ray Data's local shuffle, whose
    result depends on how fast blocks arrive, this order depends on nothing but the data and the seed.

    ``load`` (optional) turns a micro-batch of key rows into tensors (e.g. ``data.cache.load_batch`` over the
    tensor cache); it runs here, in the worker, on a thread that keeps up to ``prefetch`` micro-batches ready,
    so the shard itself stays small."""
    from concurrent.futures import ThreadPoolExecutor

    def keyed():
        window = micro_batch * window_batches
        i = 0
        for w, chunk in enumerate(shard.iter_batches(batch_size=window, batch_format="numpy")):
            n = len(next(iter(chunk.values())))
            order = np.random.default_rng([seed, epoch, w]).permutation(n)
            for start in range(0, n - micro_batch + 1, micro_batch):
                if i >= skip:
                    idx = order[start : start + micro_batch]
                    yield i, {k: v[idx] for k, v in chunk.items()}
                i += 1

    if load is None:
        for i, batch in keyed():
            yield i, _to_torch(batch)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="va-prefetch") as pool:
        ahead: deque = deque()
        for i, batch in keyed():
            ahead.append((i, pool.submit(load, batch)))
            if len(ahead) > prefetch:
                j, fut = ahead.popleft()
                yield j, _to_torch(fut.result())
        while ahead:
            j, fut = ahead.popleft()
            yield j, _to_torch(fut.result())


def _maybe_inject_fault(spec: DriverSpec, step: int, rank: int, world: int) -> None:
    if spec.fail_at_step is None or step != spec.fail_at_step or rank != (1 if world > 1 else 0):
        return
    marker = Path(spec.fault_marker)
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"killed rank {rank} at step {step}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def use_assigned_cpus() -> int:
    """Set this worker's torch intra-op threads to the CPUs Ray assigned it (``ScalingConfig``'s
    ``resources_per_worker``); returns the thread count. Outside a Ray worker torch's count is kept."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU") if ray.is_initialized() else None
    if cpus:
        torch.set_num_threads(max(1, int(cpus)))
    return torch.get_num_threads()


def mean_over_workers(values: dict[str, torch.Tensor], keys) -> dict[str, float]:
    """All-reduce mean of the named scalar metrics over ranks (every rank must call it)."""
    import torch.distributed as dist

    vec = torch.stack([torch.as_tensor(values.get(k, float("nan"))).float().cpu() for k in keys])
    if dist.is_available() and dist.is_initialized():
        vec = vec.to("cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(vec)
        vec = vec.cpu() / dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, vec, strict=True)}


def run_steps(
    spec: DriverSpec, engine, step_fn: Callable, metric_keys: tuple[str, ...], *, lora: bool, adapter_config: dict,
    validate_fn: Callable[[int], dict[str, float]] | None = None, load: Callable[[dict], dict] | None = None,
) -> None:
    """Train ``engine`` to ``spec.max_steps`` on this rank's shard ``shard_<rank>`` (resuming if possible).

    ``validate_fn(step)``, when given, runs on every rank every ``spec.eval_every`` steps and at the last step
    (at each checkpoint when ``eval_every`` is 0); its metrics are logged and reported with the next checkpoint. ``load``, when given, turns each micro-batch of key rows into tensors
    (see :func:`_batches`).
    """
    import ray.train
    from ray.train import Checkpoint

    from videoalign_ray.runtime.strategy import load_checkpoint, save_checkpoint

    if not logging.getLogger().handlers:  # a Ray Train worker: its log lines reach the driver through stderr
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("videoalign_ray").setLevel(logging.INFO)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    threads = use_assigned_cpus()
    if rank == 0:
        log.info("%d worker(s), %d torch thread(s) each", world, threads)
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_checkpoint(engine, Path(d), lora=lora)
        if rank == 0:
            log.info("resumed from checkpoint at step %d", state["step"])
    tracker = None
    if rank == 0 and spec.mlflow_run_id:
        from videoalign_ray.runtime.tracking import Tracker

        tracker = Tracker.attach(spec.mlflow_tracking_uri, spec.mlflow_run_id)
    shard = dataset_shard(f"shard_{rank}")  # a key-row file (runtime.key_table) or a Ray Data shard
    step, epoch, skip = state["step"], state["epoch"], state["batch_in_epoch"]
    progress = None
    if rank == 0:
        from videoalign_ray.runtime.progress import progress as progress_bar

        progress = progress_bar(spec.max_steps, spec.desc, "step", initial=step)  # log lines without a TTY
    last: dict[str, float] = {}
    timing: dict[str, float] = {"time/torch_threads": float(threads)}  # merged into every report
    first_step_at = None
    micro = 0
    t_start = time.perf_counter()
    while step < spec.max_steps:
        consumed = skip
        for idx, batch in _batches(shard, spec.micro_batch, spec.seed, epoch, skip, load=load):
            loss, metrics = step_fn(batch, step_generator(spec.seed, step * spec.grad_accum + micro, rank))
            engine.backward(loss)
            engine.step()
            consumed = idx + 1
            micro += 1
            if micro < spec.grad_accum:
                continue
            micro = 0
            step += 1
            if first_step_at is None:  # the first step of this process (of the run, or after a resume)
                first_step_at, first_step = time.perf_counter(), step
                if spec.job_started_unix:
                    timing["startup/first_step_s"] = time.time() - spec.job_started_unix
                    if tracker is not None:
                        tracker.log_metrics({"startup/first_step_s": timing["startup/first_step_s"]}, step)
            elif step > first_step:
                timing["time/mean_step_s"] = (time.perf_counter() - first_step_at) / (step - first_step)
            _maybe_inject_fault(spec, step, rank, world)
            if step % spec.log_every == 0 or step == spec.max_steps:
                last = mean_over_workers(metrics, metric_keys)
                last["step_time_s"] = (time.perf_counter() - t_start) / spec.log_every
                t_start = time.perf_counter()
                if tracker is not None:
                    tracker.log_metrics(last, step)
                if progress is not None:
                    progress.set_postfix(loss=f"{last['loss']:.4f}")
            if progress is not None:
                progress.update(1)
            is_checkpoint = step % spec.checkpoint_every == 0 or step == spec.max_steps
            if validate_fn is not None and (step == spec.max_steps or (
                    step % spec.eval_every == 0 if spec.eval_every else is_checkpoint)):
                val = validate_fn(step)
                last.update(val)
                if tracker is not None and val:
                    tracker.log_metrics(val, step)
            if is_checkpoint:
                state = {"step": step, "epoch": epoch, "batch_in_epoch": consumed}
                with tempfile.TemporaryDirectory(prefix="va-ckpt-") as tmp:
                    save_checkpoint(engine, Path(tmp), state, lora=lora, rank=rank, adapter_config=adapter_config)
                    ray.train.report({"step": step, **last, **timing}, checkpoint=Checkpoint.from_directory(tmp))
            if step >= spec.max_steps:
                break
        else:
            if consumed == skip and skip == 0:
                raise RuntimeError(f"rank {rank}: shard yields no full batch of {spec.micro_batch} rows")
            epoch, skip = epoch + 1, 0
            continue
        break
    if progress is not None:
        progress.close()
