"""Many nodes, simulated on one machine (issue 12): ``ray.cluster_utils.Cluster`` with 3 nodes of 2 CPUs.

The Flow-DPO job joins the cluster (``RAY_ADDRESS``) as ``ray job submit`` would make it, with 3 Ray Train
workers of 2 CPUs (one per node) and the cache and checkpoints on a path every node sees. The decode tasks
must run on more than one node. After the first checkpoint a worker node is removed and a fresh one added
(a preempted node and its replacement): the job must restart its worker group from that checkpoint and finish.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def three_nodes(monkeypatch):
    from ray.cluster_utils import Cluster

    # its own temp dir: the address file of this cluster must not be found by other tests' ray.init()
    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="vr-", dir="/tmp"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes(timeout=120)
    try:
        yield cluster, workers
    finally:
        cluster.shutdown()


def _registered_checkpoint(out: Path) -> bool:
    """Whether Ray Train's controller has registered a checkpoint (its snapshot file is written after that; the
    checkpoint folder appears earlier, before the report reaches the controller)."""
    return any(out.glob("ray_results/*/checkpoint_manager_snapshot.json"))


def test_flow_dpo_across_three_nodes_survives_losing_one(three_nodes, tmp_path):
    cluster, workers = three_nodes
    out = tmp_path / "out"
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "job.log"
    with open(log_path, "w") as log:
        job = subprocess.Popen(
            [sys.executable, "jobs/flow_dpo.py", "--output-dir", str(out), "--num-workers", "3",
             "--cpus-per-worker", "2", "--max-steps", "6", "--checkpoint-every", "2", "--batch-size", "1",
             "--num-samples", "0", "--fit-timeout-s", "600"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 400
            while not _registered_checkpoint(out) and job.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
            assert _registered_checkpoint(out), log_path.read_text()[-4000:]
            assert job.poll() is None, "the job ended before a node could be removed"
            cluster.remove_node(workers[0])  # one worker of the group dies with its node
            cluster.add_node(num_cpus=2)  # the replacement node, as an autoscaler would start
            job.wait(timeout=500)
        finally:
            if job.poll() is None:
                job.kill()
    text = log_path.read_text()
    assert job.returncode == 0, text[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6
    assert summary["data_stats"]["decode_nodes"] >= 2, summary["data_stats"]
    assert "joined the Ray cluster at" in text and "(RAY_ADDRESS)" in text
    assert "resumed from checkpoint at step 2" in text, text[-4000:]  # not from scratch
    assert summary["final_metrics"]["time/torch_threads"] == 2
