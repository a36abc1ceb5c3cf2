"""The job runs unchanged under `ray job submit` against a local `ray start --head` cluster."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit(tmp_path):
    bindir = Path(sys.executable).parent
    ray_tmp = tempfile.mkdtemp(prefix="vr-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "RAY_TMPDIR": ray_tmp,
           "RAY_AUTH_MODE": "token"}  # Ray's token authentication stays on; the CLI sends ~/.ray/auth_token
    gcs, dash = _free_port(), _free_port()
    subprocess.run(
        [str(bindir / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "2",
         "--disable-usage-stats"],
        env=env, check=True, capture_output=True, timeout=120,
    )
    try:
        out = tmp_path / "out"
        proc = subprocess.run(
            [str(bindir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
             "--", "python", "jobs/flow_dpo.py", "--output-dir", str(out), "--max-steps", "2", "--num-samples", "0"],
            env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "succeeded" in proc.stdout + proc.stderr
        assert (out / "final" / "adapter" / "adapter_model.safetensors").is_file()
        assert '"steps": 2' in (out / "summary.json").read_text()
    finally:
        subprocess.run([str(bindir / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)
