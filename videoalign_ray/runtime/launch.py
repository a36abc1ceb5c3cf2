"""Ray glue shared by the training jobs: start or join Ray, build a TorchTrainer, publish final weights."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from videoalign_ray.errors import DataError


def init_ray() -> None:
    """Join the cluster named by ``RAY_ADDRESS`` (set by ``ray job submit``) or start a local Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), logging_level="WARNING", log_to_driver=True)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # deterministic shards for a given seed
    ctx.enable_progress_bars = sys.stderr.isatty()  # bars in a terminal, not in CI logs


def use_gpu_default(configured: bool | None) -> bool:
    import ray

    return configured if configured is not None else ray.cluster_resources().get("GPU", 0) > 0


def make_trainer(loop: Callable, loop_config: dict, *, shards: list, num_workers: int, use_gpu: bool, out: Path,
                 run_name: str, max_failures: int, num_to_keep: int, extra_datasets: dict | None = None):
    """A TorchTrainer whose worker r reads ``shard_r`` (and every worker the ``extra_datasets``), with
    checkpoints and the run snapshot under ``<out>/ray_results/<run_name>`` (re-running resumes)."""
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        datasets={**{f"shard_{i}": s for i, s in enumerate(shards)}, **(extra_datasets or {})},
        # Ray Train resolves ingest options in its controller process, whose DataContext does not carry the
        # driver's preserve_order: without this the shards' rows arrive in block-completion order, and two
        # runs with the same seed train on different batches.
        dataset_config=DataConfig(datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True)),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(out / "ray_results"),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=num_to_keep),
        ),
    )


def resolve_grad_accum(global_batch: int | None, micro_batch: int, num_workers: int, grad_accum: int) -> int:
    """Gradient-accumulation steps: ``global_batch / (micro_batch * num_workers)`` when a global batch is given
    (so the same config trains with the same batch on 8 or 64 GPUs), else ``grad_accum``.

    Raises:
        ConfigError: a global batch that the micro-batch times the workers does not divide.
    """
    if global_batch is None:
        return grad_accum
    per_step = micro_batch * num_workers
    if global_batch % per_step:
        from videoalign_ray.errors import ConfigError

        raise ConfigError(f"--global-batch {global_batch} is not a multiple of micro-batch {micro_batch} x "
                          f"{num_workers} workers = {per_step}")
    return global_batch // per_step


def split_for_workers(dataset, num_workers: int, batch_size: int) -> tuple[list, int, int]:
    """Equal per-rank shards; returns (shards, rows per worker, micro-batch clipped to it).

    Raises:
        ValueError: fewer rows than workers.
    """
    n = dataset.count()
    per_worker = n // num_workers
    if per_worker < 1:
        raise DataError(f"{n} usable rows cannot feed {num_workers} workers; lower --num-workers")
    return dataset.split(num_workers, equal=True), per_worker, min(batch_size, per_worker)
