"""Shared fixtures: the ../shared/data folder (tests skip with a reason without it) and a tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Serve autoscaling from replica-side metrics: Ray restarts per test module in this one process, and the
# handle-side metrics pusher of this process can be left pointing at an earlier Ray session ("owner is
# unknown"), after which the controller never saw load and the autoscaling test did not scale up (CI).
os.environ.setdefault("RAY_SERVE_COLLECT_AUTOSCALING_METRICS_ON_HANDLE", "0")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VIDEOALIGN_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found at {SHARED_DATA} (set VIDEOALIGN_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from videoalign_ray.flow.model import materialize_tiny_base

    return materialize_tiny_base(tmp_path_factory.mktemp("tiny") / "base_model", seed=0)


def _ray_cpus_settle(total: float, timeout_s: float = 15.0) -> bool:
    """True when every CPU of this process's Ray is free again within ``timeout_s`` (actors of the module that
    just ended release theirs asynchronously)."""
    import time

    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) >= total:
            return True
        time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray (2 CPUs, no dashboard) for the test modules of one pytest-xdist worker, started by the first
    module that needs it (or an in-process job's private Ray found running) and kept for the next ones: each
    Ray start costs ~12 CPU-s of daemons and ~5 s, and Ray Data's task workers are reused while the driver lives.
    A module that leaves CPUs held (an actor not stopped) gets the Ray shut down after it, so the next module
    starts clean; the last module's Ray goes when the worker exits."""
    import ray
    from ray._private import auto_init_hook

    # A thread an earlier module left behind (a Serve handle's metrics pusher, a finalizer) that calls a Ray
    # API auto-connects a fresh Ray; in CI one did so while this fixture's ray.init was starting its node
    # ("ray.init twice"). The pytest process never relies on auto-connect: turn it off here only.
    auto_init_hook.enable_auto_connect = False
    from ray.experimental import internal_kv

    if ray.is_initialized() and not internal_kv._internal_kv_initialized():
        ray.shutdown()  # ray.cluster_utils.Cluster.shutdown() resets this process's KV client: not reusable
    if not ray.is_initialized():
        from videoalign_ray.runtime.launch import single_machine_env

        with single_machine_env():  # as the jobs' private local Ray (runtime/launch.init_ray)
            ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    total = ray.cluster_resources().get("CPU", 0)
    yield
    if ray.is_initialized() and not _ray_cpus_settle(total):
        ray.shutdown()


# The longest test files (seconds on the 2-core CI machine), run first: with two pytest-xdist workers taking
# one file at a time, a long file picked up last would leave the other worker idle at the end.
SLOW_FILES = ["test_online_job.py", "test_reward_job.py", "test_flow_job.py", "test_align_proof.py",
              "test_nrg_jobs.py", "test_multinode.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable: file order kept otherwise
