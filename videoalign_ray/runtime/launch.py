"""Ray glue shared by the training jobs: start or join Ray, build a TorchTrainer, publish final weights."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from videoalign_ray.errors import DataError

log = logging.getLogger(__name__)


def _running_cluster() -> tuple[str | None, str]:
    """The address ``ray.init()`` will join and where it came from: ``RAY_ADDRESS``, else the latest
    ``ray start`` on this machine (Ray's address file under its temp dir), else (None, "") for a new local Ray."""
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return (None, "") if env == "local" else (env, "RAY_ADDRESS")
    try:
        from ray._private.utils import read_ray_address  # the file ray.init itself reads; private in Ray 2.x

        found = read_ray_address()
    except Exception:  # noqa: BLE001 - an unreadable file: start a private local Ray
        found = None
    return (found, "the latest `ray start` on this machine") if found else (None, "")


PREEMPTION_FLAG = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"  # Ray Train V2's switch for its preemption watcher


@contextlib.contextmanager
def single_machine_env(ray_tmpdir: str | None = None) -> Iterator[None]:
    """The environment a Ray started inside the block (``ray.init`` of a new local cluster) gives its processes:
    ``RAY_TMPDIR=ray_tmpdir`` when given, ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0`` unless the user set it (one
    machine has no node to drain; Ray Train starts the watcher as one more actor per fit, ~2.65 CPU-s), and no
    ``RAY_ADDRESS`` (which they would not inherit anyway: they read the address file). The driver's own
    environment is restored on exit, so a later ``ray.init`` in this process is not pointed at this cluster."""
    values = {PREEMPTION_FLAG: os.environ.get(PREEMPTION_FLAG, "0")}
    if ray_tmpdir:
        values["RAY_TMPDIR"] = ray_tmpdir
    saved = {k: os.environ.pop(k, None) for k in (*values, "RAY_ADDRESS")}
    os.environ.update(values)
    try:
        yield
    finally:
        for k in values:
            os.environ.pop(k, None)
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def init_ray() -> None:
    """Join the cluster named by ``RAY_ADDRESS`` (set by ``ray job submit``), else the latest ``ray start`` on this
    machine (Ray's own rule), else start a private local Ray; log which one and what it has free, so a job that
    joined a busy cluster by accident says so (``RAY_ADDRESS=local`` starts a private one).

    A private local Ray gets its own temp dir (``RAY_TMPDIR``, inherited by its raylet and workers) holding its
    own address file. Without it, Ray-internal code in its workers that looks a cluster up by "the latest
    ``ray start`` on this machine" (Ray Train's placement-group cleaner uses the state API that way) finds any
    cluster someone starts beside it later, decides the run's controller is gone and tears the run down
    (reproduced: a 3-round online run crashed in round 2 when a test ran ``ray start``). Its processes also get
    ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0`` unless the user set it: one machine has no node to drain.
    """
    import ray

    if not ray.is_initialized():
        address, source = _running_cluster()
        if address is None:
            private = tempfile.mkdtemp(prefix="vr-", dir="/tmp" if os.path.isdir("/tmp") else None)  # short: socket paths
            # Ray's processes (and the workers its raylet spawns) copy the environment at this ray.init
            with single_machine_env(private):
                ray.init(address="local", logging_level="WARNING", log_to_driver=True)
            gcs = ray.get_runtime_context().gcs_address
            Path(private, "ray").mkdir(parents=True, exist_ok=True)
            Path(private, "ray", "ray_current_cluster").write_text(gcs)
            where = f"started a private local Ray at {gcs} (logs under {private}/ray)"
        else:
            # Ray's own lookup (not the address we read): it also finds the cluster's auth token
            ray.init(address=os.environ.get("RAY_ADDRESS"), logging_level="WARNING", log_to_driver=True)
            where = f"joined the Ray cluster at {address} ({source})"
        total, free = ray.cluster_resources(), ray.available_resources()
        log.info(f"{where}: {free.get('CPU', 0):g}/{total.get('CPU', 0):g} CPUs and "
                 f"{free.get('GPU', 0):g}/{total.get('GPU', 0):g} GPUs free"
                 + ("; RAY_ADDRESS=local starts a private one" if source.startswith("the latest") else ""))
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # deterministic shards for a given seed
    ctx.enable_progress_bars = sys.stderr.isatty()  # bars in a terminal, not in CI logs


def collect_rows(dataset, total: int | None, desc: str, unit: str) -> list[dict]:
    """The rows of a Ray Dataset of small result rows, streamed (its operators run while rows arrive) with a
    progress bar or, without a terminal, a log line every ``VIDEOALIGN_PROGRESS_EVERY_S`` seconds:
    done/total (total None: not known ahead) and rate for the stage ``desc``."""
    from videoalign_ray.runtime.progress import progress

    rows = []
    with progress(total, desc, unit) as bar:
        for row in dataset.iter_rows():
            rows.append(row)
            bar.update(1)
    return rows


def current_node_id() -> str:
    """The Ray node id of the calling task or actor; "" when Ray is not initialized (a direct call in a test)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def _settled_free_cpus(settle_s: float = 3.0, timeout_s: float = 10.0) -> float:
    """The cluster's free CPUs once the job's own data stage has let go of them: Ray Data stops its encoder
    actors asynchronously after the last row, so right after the data stage one CPU can still look taken (seen
    on a loaded CI machine: one worker on 2 free CPUs got 1). Returns at once when every CPU is free, else when
    the count has not risen for ``settle_s`` seconds, at most after ``timeout_s`` (a cluster busy with others)."""
    import ray

    total = ray.cluster_resources().get("CPU", 0)
    free = ray.available_resources().get("CPU", 0)
    deadline, changed = time.monotonic() + timeout_s, time.monotonic()
    while free < total and time.monotonic() - changed < settle_s and time.monotonic() < deadline:
        time.sleep(0.25)
        now = ray.available_resources().get("CPU", 0)
        if now > free:
            free, changed = now, time.monotonic()
    return free


def resolve_cpus_per_worker(configured: int | None, num_workers: int, use_gpu: bool) -> int:
    """CPUs per Ray Train worker: ``configured``, else 1 on GPU (the GPU computes; the other CPUs stay for Ray
    Data tasks), else the cluster's free CPUs shared out over ``num_workers`` (at least 1), lowered until that
    many workers of that size fit on the nodes (a worker does not span nodes). Ray's own default
    is 1 CPU per worker, and Ray sets a 1-CPU worker's torch to one thread: on a 2-core machine one worker
    trained at half speed."""
    import ray

    if configured:
        return configured
    if use_gpu:
        return 1
    cpus = max(1, int(_settled_free_cpus() // num_workers))
    # a worker's CPUs come from one node: shrink until the nodes can hold num_workers of them
    nodes = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    while cpus > 1 and sum(int(n // cpus) for n in nodes) < num_workers:
        cpus -= 1
    return cpus


def make_trainer(loop: Callable, loop_config: dict, *, shards: list, num_workers: int, use_gpu: bool, out: Path,
                 run_name: str, max_failures: int, num_to_keep: int, extra_datasets: dict | None = None,
                 cpus_per_worker: int | None = None, storage_path: str | None = None):
    """A TorchTrainer whose worker r reads ``shard_r`` (and every worker the ``extra_datasets``; Ray Datasets,
    or ``runtime.key_table.KeyTableShard`` files that the workers read themselves), with
    checkpoints and the run snapshot under ``<storage_path>/<run_name>`` (a path or a URI that Ray Train's
    pyarrow filesystems read, e.g. ``s3://bucket/prefix``; default ``<out>/ray_results``; re-running resumes). Each worker
    reserves ``cpus_per_worker`` CPUs (None: :func:`resolve_cpus_per_worker`'s default) and one GPU with
    ``use_gpu``; ``runtime.driver.run_steps`` sets its torch threads to them."""
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from videoalign_ray.runtime.key_table import KeyTableShard, run_with_shards
    from videoalign_ray.runtime.placement import train_backend

    named = {**{f"shard_{i}": s for i, s in enumerate(shards)}, **(extra_datasets or {})}
    files = {k: v for k, v in named.items() if isinstance(v, KeyTableShard)}  # read by the workers themselves
    return TorchTrainer(
        functools.partial(run_with_shards, loop, files) if files else loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=train_backend(use_gpu)),  # gloo on logical GPUs without CUDA
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={
            "CPU": resolve_cpus_per_worker(cpus_per_worker, num_workers, use_gpu), **({"GPU": 1} if use_gpu else {})}),
        datasets={k: v for k, v in named.items() if k not in files},
        # Ray Train resolves ingest options in its controller process, whose DataContext does not carry the
        # driver's preserve_order: without this the shards' rows arrive in block-completion order, and two
        # runs with the same seed train on different batches.
        dataset_config=DataConfig(datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True)),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path or str(out / "ray_results"),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=num_to_keep),
        ),
    )


def fit_with_timeout(trainer, timeout_s: float, what: str):
    """``trainer.fit()`` that gives up after ``timeout_s`` seconds (Ray Train's fit has no timeout of its own: a
    worker group that cannot be placed waits for resources forever).

    The fit runs on a daemon thread; on timeout the driver raises and, when it exits, Ray ends the run's
    controller and workers (they belong to the driver's job). Checkpoints already written stay, so the same
    command resumes.

    Raises:
        FitTimeoutError: not finished within ``timeout_s``; the message names ``what``, the workers asked for
            and the cluster's free CPUs/GPUs.
        Whatever ``fit`` raised.
    """
    import ray

    from videoalign_ray.errors import FitTimeoutError

    box: dict = {}

    def run() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as err:  # noqa: BLE001 - re-raised on the caller's thread
            box["error"] = err

    thread = threading.Thread(target=run, name=f"fit:{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        scaling = trainer.scaling_config
        free = ray.available_resources()
        raise FitTimeoutError(
            f"{what}: Ray Train fit did not finish within {timeout_s:g} s ({scaling.num_workers} workers, "
            f"use_gpu={scaling.use_gpu}; the cluster has {free.get('CPU', 0):g} CPUs and {free.get('GPU', 0):g} "
            f"GPUs free now). Raise the timeout for a longer run, or give the job a cluster with room for its "
            f"workers; rerunning the same command resumes from the last checkpoint.")
    if "error" in box:
        raise box["error"]
    return box["result"]


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


def split_for_workers(key_rows, num_workers: int, batch_size: int) -> tuple[list, int, int]:
    """Equal per-rank shards of a data plane's key rows (``data.cache.KeyRows``: one file per rank, read
    lazily); returns (shards, rows per worker, micro-batch clipped to it).

    Raises:
        DataError: fewer rows than workers.
    """
    shards, per_worker = key_rows.split(num_workers)
    if per_worker < 1:
        raise DataError(f"{key_rows.count()} usable rows cannot feed {num_workers} workers; lower --num-workers")
    return shards, per_worker, min(batch_size, per_worker)


def wait_all(refs: list, what: str, timeout_s: float, on_done=None) -> list:
    """``ray.get`` of ``refs`` with a deadline per completion and progress lines; results in ``refs`` order.

    Raises:
        TimeoutError: no reference finished within ``timeout_s`` (names ``what`` and how many were left).
    """
    import ray

    index = {ref: i for i, ref in enumerate(refs)}
    results, pending, start = [None] * len(refs), list(refs), time.monotonic()
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=timeout_s)
        if not ready:
            raise TimeoutError(f"{what}: nothing finished in {timeout_s:.0f} s ({len(pending)} of {len(refs)} left)")
        results[index[ready[0]]] = value = ray.get(ready[0])
        if on_done is not None:
            on_done(value)
        done = len(refs) - len(pending)
        if done == len(refs) or done % max(1, len(refs) // 4) == 0:
            log.info("%s: %d/%d done (%.1f s)", what, done, len(refs), time.monotonic() - start)
    return results
