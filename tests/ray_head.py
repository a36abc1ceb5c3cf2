"""A `ray start --head` cluster in its own temp dir, for the tests that run jobs as separate processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_head(num_cpus: int, **env_extra: str) -> Iterator[dict]:
    """Start a head node with ``num_cpus`` on 127.0.0.1 (free GCS and dashboard ports) and stop it after.

    Yields ``{"env", "gcs", "dash"}``: the environment to run the CLI and jobs with (``RAY_TMPDIR`` private,
    so its address file is the one jobs find; no ``RAY_ADDRESS``), the GCS address and the dashboard URL.
    """
    ray_tmp = tempfile.mkdtemp(prefix="vr-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1", **env_extra)
    gcs, dash = free_port(), free_port()
    subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", str(num_cpus),
         "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=120)
    try:
        yield {"env": env, "gcs": f"127.0.0.1:{gcs}", "dash": f"http://127.0.0.1:{dash}"}
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)
