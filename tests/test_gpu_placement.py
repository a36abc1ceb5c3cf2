"""GPU placement without a GPU: a Ray started with *logical* GPUs on this CPU machine schedules every job as a GPU
cluster would (GPU resources asked for exactly as there), and the workers compute on CPU because CUDA is absent
(device, training backend and ``precision: auto`` follow ``torch.cuda.is_available()`` inside the workers).

Each job must finish, and its model work (renders, samples) must have run in a process other than the driver (this
pytest process), holding a logical GPU.
"""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch

from videoalign_ray.config import validate_config

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="logical GPUs stand in for GPUs a CPU machine lacks")


@pytest.fixture(scope="module")
def logical_gpu_ray():
    """A local Ray with 2 CPUs and 2 logical GPUs (Ray has no GPU to find here: it trusts ``num_gpus``)."""
    import ray
    from ray._private import auto_init_hook

    from videoalign_ray.runtime.launch import single_machine_env

    auto_init_hook.enable_auto_connect = False
    if ray.is_initialized():
        ray.shutdown()
    with single_machine_env():
        ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _on_a_logical_gpu(worker: dict) -> None:
    assert worker["pid"] != os.getpid(), "model work ran in the driver process"
    assert worker["gpu_ids"], f"the task held no GPU: {worker}"
    assert worker["device"] == "cpu"  # the logical GPU has no CUDA behind it


def test_placement_helpers_follow_the_worker(logical_gpu_ray):
    import ray

    from videoalign_ray.runtime.placement import (
        gpu_workers_have_cuda,
        resolve_bf16,
        run_model_task,
        train_backend,
        use_gpu_default,
        worker_info,
    )

    assert use_gpu_default(None) is True  # the cluster has GPU resources: model work asks for them
    assert gpu_workers_have_cuda() is False and train_backend(True) == "gloo"
    assert resolve_bf16("auto", True) is False and resolve_bf16("bf16", True) is True
    result, worker = run_model_task(torch.ones, 3, use_gpu=True, what="a test tensor", timeout_s=60)
    assert torch.equal(result, torch.ones(3))
    _on_a_logical_gpu(worker)
    with pytest.raises(ZeroDivisionError):  # the task's own error comes back as its type
        run_model_task(lambda: 1 / 0, use_gpu=True, what="a failing task", timeout_s=60)

    @ray.remote(num_gpus=2, num_cpus=0)
    class Holder:
        def ready(self):
            return worker_info()

    holder = Holder.remote()  # every GPU taken: a model task must time out naming what it waited for
    ray.get(holder.ready.remote(), timeout=60)
    with pytest.raises(TimeoutError, match=r"a starved task: no result after 2 s .*'num_gpus': 1"):
        run_model_task(torch.ones, 1, use_gpu=True, what="a starved task", timeout_s=2)
    ray.kill(holder)


def test_flow_dpo_with_samples_on_logical_gpus(logical_gpu_ray, tmp_path):
    """The default Flow-DPO job (2 Ray Train workers with one GPU each, the encoder actor on a GPU, samples in a
    GPU task) finishes; it trains with gloo in float32 because the workers have no CUDA."""
    from videoalign_ray.pipelines.flow_dpo import FlowDPOConfig, run_flow_job

    s = run_flow_job(validate_config(FlowDPOConfig, dict(output_dir=str(tmp_path / "dpo"), max_steps=2,
                                                          num_samples=1, sample_steps=2, checkpoint_every=2)))
    assert s["steps"] == 2 and len(s["samples"]) == 2
    assert all(os.path.getsize(p) > 0 for p in s["samples"])
    _on_a_logical_gpu(s["samples_worker"])
    assert sorted(p.name for p in (tmp_path / "dpo" / "samples").iterdir()) == [
        "00_policy.mp4", "00_prompt.txt", "00_reference.mp4"]


def test_generate_and_reward_jobs_on_logical_gpus(logical_gpu_ray, tmp_path):
    """jobs/generate.py samples in a GPU actor; score_videos scores with GPU actors; both finish."""
    from videoalign_ray.pipelines.generate import GenerateConfig, run_generate
    from videoalign_ray.pipelines.score_videos import ScoreVideosConfig, run_score_videos
    from videoalign_ray.serve.scorer import make_untrained_checkpoint

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left to right\n")
    g = run_generate(validate_config(GenerateConfig, dict(output_dir=str(tmp_path / "gen"), prompts=str(prompts),
                                                          samples_per_prompt=2, sample_steps=2)))
    assert g["videos"] == 2
    _on_a_logical_gpu(g["sampler_worker"])
    table = pd.read_csv(g["scores_csv"])
    ckpt = make_untrained_checkpoint(tmp_path / "reward")
    pd.DataFrame({"path": table["path"], "prompt": table["prompt"]}).to_csv(tmp_path / "videos.csv", index=False)
    s = run_score_videos(validate_config(ScoreVideosConfig, dict(
        data=str(tmp_path / "videos.csv"), reward_checkpoint=str(ckpt), output_dir=str(tmp_path / "score"))))
    assert s["videos"] == 2 and s["failed"] == 0
    assert json.loads((tmp_path / "score" / "summary.json").read_text())["videos"] == 2


def test_reward_training_and_evaluation_on_logical_gpus(logical_gpu_ray, tmp_path, shared_data):
    """jobs/train_reward.py (Ray Train workers holding a logical GPU each, gloo, float32) and jobs/eval_reward.py
    (GPU scoring actors) finish on the same cluster."""
    from videoalign_ray.pipelines.eval_reward import EvalRewardConfig, run_eval_reward
    from videoalign_ray.pipelines.train_reward import TrainRewardConfig, run_train_reward

    t = run_train_reward(validate_config(TrainRewardConfig, dict(
        output_dir=str(tmp_path / "rw"), max_steps=2, checkpoint_every=2, train_pairs=8, val_pairs=4, batch_size=2)))
    assert t["steps"] == 2
    e = run_eval_reward(validate_config(EvalRewardConfig, dict(
        output_dir=str(tmp_path / "ev"), reward_checkpoint=t["checkpoint"],
        data=str(shared_data / "videoalign-examples" / "example.csv"))))
    assert e["pairs"] == 3
