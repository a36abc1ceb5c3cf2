"""End to end on a local Ray: the Flow-DPO job, resume, a killed worker, MLflow contents (bad videos: the S3
cache test in test_s3_cache.py)."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from videoalign_ray.config import validate_config
from videoalign_ray.pipelines.flow_dpo import FlowDPOConfig, run_flow_job

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("local_ray")]




def _cfg(out: Path, **kw) -> FlowDPOConfig:
    values = dict(output_dir=str(out), max_steps=4, checkpoint_every=2, num_samples=1, sample_steps=3,
                  num_workers=2, zero_stage=2)
    values.update(kw)
    return validate_config(FlowDPOConfig, values)


def _mlflow_run(summary):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=summary["mlflow_tracking_uri"])
    return client, client.get_run(summary["mlflow_run_id"])


def test_job_resume_and_a_killed_worker_reach_the_uninterrupted_result(tmp_path):
    """Three runs on one table (written once, so their inputs are byte-identical): an uninterrupted 8-step run
    (its outputs and MLflow contents checked), a run whose rank 1 is SIGKILLed at step 5 (Ray Train restarts the
    group from the step-4 checkpoint) that must end with the same weights, and the first run's command again
    with 10 steps, which resumes at step 8, reuses the latent cache and the MLflow run."""
    from videoalign_ray.synthetic.world import make_preference_dataset

    data = make_preference_dataset(tmp_path / "data", seed=3)
    base = dict(data=str(data), max_steps=8, checkpoint_every=2, seed=3)
    out = tmp_path / "clean"
    s1 = run_flow_job(_cfg(out, **base))
    assert s1["steps"] == 8 and s1["pairs_used"] > 0 and s1["rejects"] == 0
    assert (out / "final" / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "final" / "pytorch_lora_weights.safetensors").is_file()  # diffusers' LoRA format
    assert json.loads((out / "final" / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert (out / "final" / "config.yaml").is_file() and (out / "rejects.csv").is_file()
    card = (out / "final" / "README.md").read_text()  # the model card
    assert "base_model: videoalign-ray preset tiny-world" in card and "# Flow-DPO of" in card, card
    assert "**8** optimizer steps" in card and str(data) in card and "| loss |" in card and "load_lora_weights" in card
    assert "| `lr` | `0.001` |" in card and "| `beta` | `500.0` |" in card
    adapter_base = json.loads((out / "final" / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert adapter_base == "videoalign-ray preset tiny-world"  # not this machine's path to the asset
    assert len(s1["samples"]) == 2 and all(Path(p).stat().st_size > 0 for p in s1["samples"])
    assert s1["final_metrics"]["time/torch_threads"] == 1  # 2 workers share the 2 CPUs
    client, run = _mlflow_run(s1)
    assert run.info.status == "FINISHED"
    hist = client.get_metric_history(run.info.run_id, "loss")
    assert sorted({m.step for m in hist}) == list(range(1, 9))
    assert {"implicit_acc", "chosen_gap", "rejected_gap", "kl_proxy", "step_time_s"} <= set(run.data.metrics)
    assert run.data.params["beta"] == "500.0"
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "final/adapter")}
    assert "final/adapter/adapter_model.safetensors" in arts

    faulty = run_flow_job(_cfg(tmp_path / "faulty", fail_at_step=5, num_samples=0, **base))
    assert (tmp_path / "faulty" / ".fault_injected").is_file(), "the fault was never injected"
    assert faulty["steps"] == 8
    assert faulty["final_metrics"]["loss"] == pytest.approx(s1["final_metrics"]["loss"], abs=1e-6)
    a = load_file(Path(s1["checkpoint"]) / "adapter" / "adapter_model.safetensors")
    b = load_file(Path(faulty["checkpoint"]) / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert any(a[k].abs().max() > 0 for k in a if "lora_B" in k), "training did not move the adapter"

    # Same output folder, more steps: resumes from step 8, reuses the latent cache and the MLflow run. Held-out
    # data may join a resumed run (it changes no result): val/* every --eval-every step and at the last, and
    # reference-vs-policy samples of its prompts every --val-sample-every steps (mp4s + one contact sheet).
    from PIL import Image

    from videoalign_ray.synthetic.world import split_scenes

    val = make_preference_dataset(tmp_path / "val", num_pairs=6, scenes=split_scenes(seed=0)[1], seed=4, name="val")
    s2 = run_flow_job(_cfg(out, **{**base, "max_steps": 10, "num_samples": 0, "val_data": str(val), "eval_every": 1,
                                   "val_samples": 2, "val_sample_every": 2}))
    assert s2["steps"] == 10
    assert s2["mlflow_run_id"] == s1["mlflow_run_id"] and s2["resumed_mlflow_run"]
    assert s2["data_stats"]["videos_cached"] == s2["data_stats"]["videos"] > 0
    assert s2["data_stats"]["videos_encoded"] == 0
    client, run = _mlflow_run(s2)
    assert max(m.step for m in client.get_metric_history(s1["mlflow_run_id"], "loss")) == 10
    for key in ("val/loss", "val/implicit_acc", "val/chosen_gap"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [9, 10], key
    assert 0.0 <= run.data.metrics["val/implicit_acc"] <= 1.0 and run.data.metrics["val/loss"] > 0
    assert s2["final_metrics"]["val/loss"] == pytest.approx(run.data.metrics["val/loss"])
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "validation/step_000010")}
    assert {"validation/step_000010/contact_sheet.png", "validation/step_000010/00_reference.mp4",
            "validation/step_000010/01_policy.mp4"} <= arts, arts
    assert not client.list_artifacts(run.info.run_id, "validation/step_000009")  # samples every 2 steps only
    sheet = Image.open(client.download_artifacts(run.info.run_id, "validation/step_000010/contact_sheet.png",
                                                 str(tmp_path)))
    assert sheet.width >= 2 * 4 * 160 and sheet.height > 2 * 160  # two rows of reference | policy strips


