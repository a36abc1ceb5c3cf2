"""A `ray start --head` cluster in its own temp dir, for the tests that run jobs as separate processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_head(num_cpus: int, num_gpus: int = 0, **env_extra: str) -> Iterator[dict]:
    """Start a head node with ``num_cpus`` (and ``num_gpus`` logical GPUs) on 127.0.0.1 (free GCS and dashboard ports) and stop it after.

    Yields ``{"env", "gcs", "dash"}``: the environment to run the CLI and jobs with (``RAY_TMPDIR`` private,
    so its address file is the one jobs find; no ``RAY_ADDRESS``), the GCS address and the dashboard URL.
    """
    ray_tmp = tempfile.mkdtemp(prefix="vr-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1", **env_extra)
    gcs, dash, agent = free_port(), free_port(), free_port()
    # Its own process group: `ray stop` kills every Ray on the machine (the tests of another pytest-xdist
    # worker included), so the teardown signals this group only (head, dashboard, raylet and its workers).
    starter = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus),
         # the job agent's HTTP port is fixed (52365) by default: a second Ray on the machine (the other
         # pytest-xdist worker's) that holds it leaves this head without a job agent ("No available agent")
         "--dashboard-agent-listen-port", str(agent),
         "--disable-usage-stats"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = starter.communicate(timeout=120)
        if starter.returncode != 0:
            raise RuntimeError(f"ray start failed ({starter.returncode}): {out.decode(errors='replace')[-2000:]}")
        yield {"env": env, "gcs": f"127.0.0.1:{gcs}", "dash": f"http://127.0.0.1:{dash}"}
    finally:
        _kill_group(starter.pid)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _kill_group(pgid: int, timeout_s: float = 30.0) -> None:
    """SIGKILL the process group ``pgid`` (what ``ray stop --force`` sends) and wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise TimeoutError(f"Ray head process group {pgid} still alive {timeout_s:.0f} s after SIGKILL")
