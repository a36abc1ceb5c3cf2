"""A job started beside another local Ray never waits silently (issue 11).

A plain `python jobs/online_dpo.py` (no RAY_ADDRESS) on a machine where someone ran `ray start --head` joins
that cluster (Ray's own rule: the latest `ray start`). Here that cluster has 1 CPU, so the round's two Ray
Train workers can never be placed, a wait Ray Train itself never gives up on. The job must say which cluster
it joined and fail within its --train-timeout-s with an error that names the round and the free resources.
With RAY_ADDRESS=local beside that same cluster, the job starts a private Ray and finishes: Ray Train's
placement-group cleaner inside it must not find the other cluster through the machine's address file.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_head import ray_head

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a blue square moving bottom to top", "a red circle moving top to bottom"]


@pytest.fixture(scope="module")
def busy_ray(tmp_path_factory):
    """A `ray start --head` cluster with 1 CPU (too small for a 2-worker round) and the env to run jobs beside it."""
    prompts = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    with ray_head(1) as head:
        yield head["env"], str(prompts)


def _online(out: Path, prompts: str, env: dict, train_timeout_s: int, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "jobs/online_dpo.py", "--output-dir", str(out), "--prompts", prompts, "--rounds", "1", *extra,
         "--samples-per-prompt", "2", "--steps-per-round", "2", "--batch-size", "1", "--sample-steps", "4",
         "--eval-samples-per-prompt", "0", "--train-timeout-s", str(train_timeout_s)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=train_timeout_s + 300)
    return proc, time.monotonic() - start


def test_online_job_beside_a_busy_local_ray_fails_in_bounded_time_with_a_message(busy_ray, tmp_path):
    env, prompts = busy_ray
    proc, took = _online(tmp_path / "out", prompts, env, 30)
    err = proc.stderr
    assert proc.returncode != 0, err[-3000:]
    assert re.search(r"joined the Ray cluster at \S+:\d+ \(the latest `ray start` on this machine\): 1/1 CPUs", err), \
        err[:3000]
    assert "'round-001'" in err and "did not finish within 30 s" in err, err[-3000:]
    assert "2 workers" in err and "CPUs" in err, err[-3000:]
    assert took < 300, took
    # nothing of the round was published as a policy: no summary, and the pairs stay committed for a rerun
    assert not (tmp_path / "out" / "rounds" / "round=001" / "summary.json").exists()
    assert (tmp_path / "out" / "pairs" / "_manifest.json").exists()


def test_a_private_local_ray_beside_another_cluster_finishes_its_round(busy_ray, tmp_path):
    """(Two rounds with --reference previous run in tests/test_online_job.py.)"""
    env, prompts = busy_ray
    proc, _ = _online(tmp_path / "out", prompts, {**env, "RAY_ADDRESS": "local"}, 300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ours = re.search(r"started a private local Ray at (\S+:\d+) \(logs under /tmp/vr-", proc.stderr)
    assert ours, proc.stderr[:3000]
    # Ray-internal lookups in the job's workers (Ray Train's placement-group cleaner asks the state API whether the
    # controller lives) see two GCS processes on this machine; they must pick this job's cluster, not the other
    picked = re.findall(r"Connecting to latest cluster at (\S+:\d+)\.", proc.stderr)
    assert picked, "expected the workers' cluster lookup in the log (two clusters run on this machine)"
    assert set(picked) == {ours.group(1)}, (set(picked), ours.group(1))
    assert (tmp_path / "out" / "rounds" / "round=001" / "summary.json").exists()


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
