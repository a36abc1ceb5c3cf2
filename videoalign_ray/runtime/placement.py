"""Where model work runs, and on what device.

Two questions with two different answers:

* **What to ask the cluster for** is decided on the driver from the cluster's resources: a cluster with ``GPU``
  resources gets every model task, actor and training worker with one GPU each (:func:`use_gpu_default`,
  :func:`model_task_options`).
* **What device to compute on** is decided inside the task or actor from what that process actually has
  (:func:`worker_device`: ``cuda`` when ``torch.cuda.is_available()`` there, else ``cpu``), and the training
  backend and the ``precision: auto`` choice come from a probe run as a GPU task (:func:`gpu_workers_have_cuda`).

So a Ray started with *logical* GPUs on a machine without CUDA (``ray start --head --num-gpus 4``,
``ray.init(num_gpus=4)``) schedules every job exactly as a GPU cluster would and computes on CPU: the placement
of a GPU cluster is testable in CI. Model compute never runs on the driver: :func:`run_model_task` runs a
function in a Ray task that holds the right resources and gives up after a timeout naming what it waited for.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

PROBE_TIMEOUT_S = 300.0
_probe_cache: dict[str, bool] = {}


def cluster_has_gpus() -> bool:
    """True when the running Ray cluster has ``GPU`` resources (physical or logical)."""
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def use_gpu_default(configured: bool | None) -> bool:
    """Whether model work asks for GPUs: ``configured`` when given, else whether the cluster has GPUs."""
    return configured if configured is not None else cluster_has_gpus()


def worker_device() -> torch.device:
    """The device of the calling process: ``cuda`` (Ray's ``CUDA_VISIBLE_DEVICES`` makes it the task's GPU) when
    ``torch.cuda.is_available()``, else ``cpu`` (a CPU node, or a logical GPU on a machine without CUDA)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def compute_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype:
    """The dtype model compute runs in: ``bf16`` -> bfloat16, ``fp32`` -> float32, ``auto`` -> bfloat16 on a CUDA
    device that supports it, else float32 (CPU runs, and GPUs without bf16, compute in float32).

    Raises:
        ValueError: an unknown ``precision``.
    """
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "auto":
        cuda = torch.device(device).type == "cuda"
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def _has_cuda() -> bool:
    return torch.cuda.is_available()


def gpu_workers_have_cuda(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a task holding one of the cluster's GPUs sees CUDA (False when the cluster has no GPU resources).

    Runs one task with ``num_gpus=1`` once per driver process (cached per cluster). Ray Train's backend
    (``nccl`` / ``gloo``) and ``precision: auto`` follow it, so that logical GPUs on a CPU machine train with
    gloo in float32 exactly where a GPU cluster trains with NCCL in bf16.

    Raises:
        TimeoutError: no GPU came free within ``timeout_s`` seconds (every GPU held by other work).
    """
    import ray

    if not cluster_has_gpus():
        return False
    key = ray.get_runtime_context().get_job_id()
    if key not in _probe_cache:
        ref = ray.remote(num_gpus=1, num_cpus=0)(_has_cuda).remote()
        try:
            _probe_cache[key] = bool(ray.get(ref, timeout=timeout_s))
        except ray.exceptions.GetTimeoutError as exc:
            ray.cancel(ref, force=True)
            raise TimeoutError(f"waited {timeout_s:g} s for one free GPU to probe CUDA in a GPU task "
                               f"(cluster: {ray.available_resources().get('GPU', 0):g} of "
                               f"{ray.cluster_resources().get('GPU', 0):g} GPUs free)") from exc
    return _probe_cache[key]


def train_backend(use_gpu: bool) -> str:
    """``nccl`` when the training workers hold GPUs that have CUDA, else ``gloo``."""
    return "nccl" if use_gpu and gpu_workers_have_cuda() else "gloo"


def resolve_bf16(precision: str, use_gpu: bool) -> bool:
    """Whether training runs in bf16: ``bf16`` yes, ``fp32`` no, ``auto`` when the GPU workers have CUDA."""
    return precision == "bf16" or (precision == "auto" and use_gpu and gpu_workers_have_cuda())


def model_task_options(use_gpu: bool, num_cpus: float = 1.0) -> dict[str, float]:
    """Ray resources of one model task or actor: one GPU and one CPU with ``use_gpu``, else ``num_cpus`` CPUs."""
    return {"num_gpus": 1, "num_cpus": 1} if use_gpu else {"num_gpus": 0, "num_cpus": num_cpus}


def worker_info() -> dict[str, Any]:
    """Where the calling process runs: ``pid``, Ray ``node`` id, the ``gpu_ids`` Ray gave it, its ``device``."""
    import ray

    in_ray = ray.is_initialized()
    return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id() if in_ray else "",
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()] if in_ray else [], "device": str(worker_device())}


def _with_info(fn: Callable, args: tuple, kwargs: dict) -> tuple[Any, dict[str, Any]]:
    return fn(*args, **kwargs), worker_info()


def run_model_task(fn: Callable, *args, use_gpu: bool, what: str, timeout_s: float, num_cpus: float = 1.0,
                   **kwargs) -> tuple[Any, dict[str, Any]]:
    """Run ``fn(*args, **kwargs)`` in a Ray task with :func:`model_task_options` resources; return its result and
    the task's :func:`worker_info`. ``fn`` picks its device with :func:`worker_device`.

    Raises:
        TimeoutError: the task did not finish within ``timeout_s`` seconds (message names ``what`` and the
            resources it asked for); the task is cancelled.
        Whatever ``fn`` raised (Ray re-raises it as an instance of the original exception type).
    """
    import ray

    options = model_task_options(use_gpu, num_cpus)
    ref = ray.remote(_with_info).options(**options, max_retries=0).remote(fn, args, kwargs)
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as exc:
        ray.cancel(ref, force=True)
        raise TimeoutError(f"{what}: no result after {timeout_s:g} s from a task asking for {options}") from exc
