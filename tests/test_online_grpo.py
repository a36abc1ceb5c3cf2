"""Flow-GRPO on the colocated worker group: exact on-policy ratios with the real tiny transformer (with and
without CFG); the job on a `ray start` cluster with 2 logical GPUs (2 workers, each sampling and training, every
GPU in use), a worker dying in round 1 (the group restarted, the round redone), the driver killed after round 2's
samples and resumed to the same samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ray_head import ray_head

ROOT = Path(__file__).resolve().parents[1]
ARGS = {"noise_level": 0.7, "clip_range": 1e-4, "adv_clip_max": 5.0, "kl_beta": 0.04, "cfg_scale": 1.0}


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_policy_worker_first_update_is_exactly_on_policy(tmp_path, cfg_scale):
    from videoalign_ray.flow.model import PRESETS, resolve_model_dir
    from videoalign_ray.online.policy_worker import PolicySpec, PolicyWorker

    preset = PRESETS["tiny-world"]
    model_dir = resolve_model_dir("tiny-world", None, tmp_path, 0)
    spec = PolicySpec(model_dir=str(model_dir), samples_dir=str(tmp_path / "samples"),
                      max_text_tokens=preset.max_text_tokens, num_frames=preset.num_frames, height=preset.height,
                      width=preset.width, fps=preset.fps, objective_args={**ARGS, "cfg_scale": cfg_scale},
                      sample_steps=6, lr=1e-2,
                      micro_batch=4)  # the sampling batch: the training forward is the sampling one, bit for bit
    worker = PolicyWorker(spec, 0, 1)
    before = {k: v.clone() for k, v in worker.state()["adapter"].items()}
    task = {"prompt_index": 3, "prompt": "a red circle moving top to bottom", "seeds": [1, 2, 3, 4], "sde_seed": 9,
            "scene": None}
    rec = worker.sample(1, [task], (1, 2))[0]
    assert len(rec["samples"]) == 4 and all(Path(s["path"]).is_file() for s in rec["samples"])
    again = PolicyWorker(spec, 0, 1).sample(1, [task], (1, 2))[0]  # same seeds, same weights: same samples
    assert [s["log_prob_sum"] for s in again["samples"]] == [s["log_prob_sum"] for s in rec["samples"]]
    m = worker.train(1, {3: [1.5, -0.5, 0.5, -1.5]}, updates=1)
    assert m["ratio_mean"] == 1.0 and m["approx_kl"] == 0.0 and m["clipfrac"] == 0.0, m
    assert m["micro_batches"] == 2  # 2 SDE steps x 1 micro-batch of 4
    after = worker.state()["adapter"]
    assert max(float((after[k] - before[k]).abs().max()) for k in before) > 0  # the update moved the LoRA
    assert worker.held == {}


def _job(out: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "jobs/online_grpo.py", "--output-dir", str(out), "--rounds", "2", "--num-workers", "2",
           "--prompts-per-round", "4", "--samples-per-prompt", "4", "--sample-steps", "6",
           "--eval-samples-per-prompt", "1", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _round_samples(out: Path, r: int) -> dict:
    return {p.name: [(s["seed"], s["log_prob_sum"], s["ground_truth"]) for s in json.loads(p.read_text())["samples"]]
            for p in sorted((out / "samples" / f"round-{r:03d}").glob("p*.json"))}


@pytest.mark.integration
def test_online_grpo_on_two_logical_gpus_resumes_after_a_driver_kill(tmp_path):
    out = tmp_path / "run"
    with ray_head(4, num_gpus=2, RAY_AUTH_MODE="token") as head:
        env = {**head["env"], "RAY_ADDRESS": head["gcs"]}
        killed = _job(out, env, "--fail-at-round", "2", "--fail-worker-on", "1")
        assert killed.returncode == 3, killed.stderr[-3000:]
        # a worker exited in round 1: the group was restarted once and round 1 redone, then the driver was killed
        assert (out / ".worker_fault").exists()
        assert killed.stderr.count("restarting the worker group") == 1, killed.stderr[-3000:]
        assert (out / "rounds" / "round-001" / "summary.json").exists()
        first = _round_samples(out, 2)
        assert len(first) == 4 and not (out / "rounds" / "round-002" / "summary.json").exists()
        for f in (out / "samples" / "round-002").glob("p*.json"):
            f.unlink()  # the rerun must draw them again, not find them
        done = _job(out, env)
        assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_after_round"] == 1 and summary["rounds_run"] == 1
    assert _round_samples(out, 2) == first  # the redone round drew the same samples from the same policy
    workers = summary["workers"]
    assert len(workers) == 2 and all(w["gpu_ids"] and w["device"] == "cpu" and w["backend"] == "gloo" for w in workers)
    assert len({w["pid"] for w in workers}) == 2 and all(w["pid"] != os.getpid() for w in workers)
    print("gpu_idle_share", summary["gpu_idle_share"])
    new_round = summary["rounds"][-1]
    assert new_round["gpu_idle_share"] < 0.25, new_round
    assert new_round["train"]["micro_batches"] > 0 and summary["heldout"]["n"] == 8  # 8 held-out prompts x 1
    assert summary["heldout"]["worker"]["gpu_ids"], "the evaluation ran on a (logical) GPU after the group left"

