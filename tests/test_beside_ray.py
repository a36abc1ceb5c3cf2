"""A job's private local Ray leaves the driver as it was (issue 11: a job started beside another local Ray).

The jobs beside a `ray start --head` cluster (joining it and failing in bounded time when its workers cannot
be placed; a private Ray beside it finishing its round) run in tests/test_online_job.py, on that module's
cluster, so that they cost no Ray start and no job run of their own.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def test_init_ray_leaves_the_driver_environment_as_it_was(tmp_path):
    """After a job's private Ray, a plain ray.init(num_cpus=...) in the same process starts a fresh local Ray
    (CI: the in-process job tests ran before the conftest fixture's ray.init, which then found the job's address
    file through a leaked RAY_TMPDIR: 'When connecting to an existing cluster, num_cpus ... must not be provided').
    The private Ray's processes (not the driver) see Ray Train's preemption watcher turned off."""
    code = (
        "import os, ray\n"
        "from videoalign_ray.runtime.launch import PREEMPTION_FLAG, init_ray\n"
        "keys = ('RAY_TMPDIR', 'RAY_ADDRESS', PREEMPTION_FLAG)\n"
        "before = {k: os.environ.get(k) for k in keys}\n"
        "init_ray()\n"
        "if os.environ.get('RAY_ADDRESS') == 'local':\n"
        "    seen = ray.get(ray.remote(lambda: os.environ.get(PREEMPTION_FLAG)).remote(), timeout=120)\n"
        "    assert seen == '0', seen\n"
        "ray.shutdown()\n"
        "assert {k: os.environ.get(k) for k in keys} == before, os.environ.get('RAY_TMPDIR')\n"
        "ray.init(num_cpus=1, include_dashboard=False); ray.shutdown(); print('fresh ok')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
    for extra in ({}, {"RAY_ADDRESS": "local"}):
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, **extra}, capture_output=True,
                              text=True, timeout=180)
        assert proc.returncode == 0 and "fresh ok" in proc.stdout, proc.stderr[-3000:]
