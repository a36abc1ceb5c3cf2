"""The online Flow-DPO job in its default (colocated) placement, with the issue's acceptance command on a
`ray start --num-gpus 2` cluster: both GPUs held by workers that sample and train, the driver killed after
round 2's pairs and rerun to the same pairs row for row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ray_head import ray_head

ROOT = Path(__file__).resolve().parents[1]

WORLD = ["a blue square moving bottom to top", "a red square moving top to bottom",
         "a blue circle moving top to bottom", "a yellow circle moving top to bottom"]


def _dpo_job(out: Path, env: dict, prompts: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "jobs/online_dpo.py", "--output-dir", str(out), "--prompts", str(prompts), "--rounds", "2",
           "--generators", "2", "--num-workers", "2", "--samples-per-prompt", "2", "--steps-per-round", "4",
           "--batch-size", "1", "--sample-steps", "6", "--eval-samples-per-prompt", "0", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.integration
def test_online_dpo_colocated_on_two_logical_gpus_resumes_to_the_same_pairs(tmp_path):
    """The issue's acceptance command (`--rounds 2 --generators 2 --num-workers 2` against `ray start --num-gpus 2`),
    default placement: both GPUs held by workers that sample and train; killed after round 2's pairs, resumed."""
    from videoalign_ray.online.store import PairStore

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(WORLD) + "\n")
    out = tmp_path / "run"
    with ray_head(4, num_gpus=2, RAY_AUTH_MODE="token") as head:
        env = {**head["env"], "RAY_ADDRESS": head["gcs"]}
        killed = _dpo_job(out, env, prompts, "--fail-at-round", "2")
        assert killed.returncode == 3, killed.stderr[-3000:]
        before = PairStore(out / "pairs").read()
        assert sorted(before["round"].unique()) == [1, 2]
        done = _dpo_job(out, env, prompts)
        assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["placement"] == "colocated" and summary["resumed_after_round"] == 1
    after = PairStore(out / "pairs").read()
    cols = ["round", "prompt_index", "chosen", "rejected", "chosen_seed", "rejected_seed", "margin"]
    assert after[cols].equals(before[cols])  # round 2 redone: the same pairs, row for row
    workers = summary["workers"]
    assert len(workers) == 2 and all(w["gpu_ids"] and w["backend"] == "gloo" for w in workers)
    print("gpu_idle_share", summary["gpu_idle_share"])
    assert all(share < 0.25 for share in summary["gpu_idle_share"]), summary["gpu_idle_share"]
    assert summary["rounds"][-1]["train"]["micro_batches"] > 0
