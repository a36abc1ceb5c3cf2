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


@pytest.fixture(scope="session", autouse=True)
def _quiet_serve_at_exit():
    """Quiet Serve's logger at the end of the session: a Serve handle used by a test leaves a router thread whose
    metrics push, once Ray is gone, logs an exception, and at interpreter exit it logged to a closed stream
    ("--- Logging error ---" with a traceback in CI, after the test summary)."""
    yield
    import logging

    logging.getLogger("ray.serve").setLevel(logging.CRITICAL)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for one test module (2 CPUs, no dashboard)."""
    import ray
    from ray._private import auto_init_hook

    # A thread an earlier module left behind (a Serve handle's metrics pusher, a finalizer) that calls a Ray
    # API auto-connects a fresh Ray; in CI one did so while this fixture's ray.init was starting its node
    # ("ray.init twice"). The pytest process never relies on auto-connect: turn it off here only.
    auto_init_hook.enable_auto_connect = False
    if ray.is_initialized():
        ray.shutdown()
    from videoalign_ray.runtime.launch import single_machine_env

    with single_machine_env():  # as the jobs' private local Ray (runtime/launch.init_ray)
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


# The longest test files (seconds on the 2-core CI machine), run first: with two pytest-xdist workers taking
# one file at a time, a long file picked up last would leave the other worker idle at the end.
SLOW_FILES = ["test_online_job.py", "test_reward_job.py", "test_flow_job.py", "test_align_proof.py",
              "test_nrg_jobs.py", "test_multinode.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable: file order kept otherwise
