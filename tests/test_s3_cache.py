"""Storage on S3: a local S3-compatible server (moto's server mode, a real HTTP endpoint in its own process),
the tensor cache and the output mirror against it, and the Flow-DPO job with ``--output-dir s3://...`` (its
cache, Ray Train checkpoints and outputs in the bucket)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from ray_head import free_port
from tenacity import retry, stop_after_delay, wait_fixed

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "videoalign-test"


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server on 127.0.0.1 with one bucket; yields the ``AWS_*`` variables that point at it."""
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        retry(stop=stop_after_delay(60), wait=wait_fixed(0.5), reraise=True)(httpx.get)(env["AWS_ENDPOINT_URL"], timeout=5)
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            yield env
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        server.kill()
        server.wait(timeout=30)


def _keys(prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    # not pyarrow's empty directory markers ("a/b/"): it writes one when a delete leaves a folder empty
    return [o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")]


def test_tensor_cache_round_trip_on_s3(s3_env):
    from videoalign_ray.data.cache import TensorCache, load_row

    cache = TensorCache(f"s3://{BUCKET}/unit/")
    key = "ab" + "0" * 30
    assert not cache.has(key) and cache.get(key) is None
    value = torch.randn(4, 3, 2, 2)
    cache.put(key, value)
    assert cache.has(key)
    assert torch.equal(cache.get(key), value)
    assert _keys("unit/") == [f"unit/ab/{key}.safetensors"]  # the same layout as on disk
    row = load_row({"pair_id": "p", "latents_key": key}, cache)
    assert row["pair_id"] == "p" and row["latents"].shape == (4, 3, 2, 2)
    with pytest.raises(FileNotFoundError, match="not in s3://"):
        load_row({"latents_key": "cd" + "0" * 30}, cache)


@pytest.mark.integration
def test_flow_dpo_job_with_its_output_on_s3_resumed_on_another_machine_and_a_broken_video(s3_env, tmp_path):
    """The Flow-DPO job with ``--output-dir s3://.../run`` (its own local Ray, whose workers inherit the AWS
    variables; one worker): it encodes into ``<URI>/cache``, its training workers read their latents back from
    there, Ray Train writes its checkpoints to ``<URI>/ray_results``, and the rest (summary, rejects, the final
    adapter, the MLflow store) is pushed from the driver's local mirror. The same command with more steps, with the
    local mirror gone (another machine), pulls the mirror and resumes from the checkpoint in the bucket and
    the same MLflow run. Its table has one row whose chosen video is not a video: that row is rejected with its
    row number, path and reason, and training goes on. (One job run for these checks: each job start costs the
    suite about a minute of CPU.)"""
    import io

    import pandas as pd

    from videoalign_ray.synthetic.world import make_preference_dataset

    csv_path = make_preference_dataset(tmp_path / "data", num_pairs=12, seed=1)
    (tmp_path / "data" / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    df = pd.read_csv(csv_path)
    bad = df.iloc[0].copy()
    bad["path_A"], bad["VQ"], bad["MQ"], bad["TA"] = "videos/broken.mp4", "A", "A", "A"
    pd.concat([df, bad.to_frame().T], ignore_index=True).to_csv(tmp_path / "data" / "with_bad.csv", index=False)
    uri = f"s3://{BUCKET}/run"

    def job(steps: int) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "jobs/flow_dpo.py", "--output-dir", uri, "--data", str(tmp_path / "data" / "with_bad.csv"),
             "--max-steps", str(steps), "--checkpoint-every", "3", "--num-samples", "0", "--num-workers", "1"],
            cwd=ROOT, env={**os.environ, **s3_env, "RAY_ADDRESS": "local",
                           "VIDEOALIGN_STAGING_DIR": str(tmp_path / "staging")},
            capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    job(3)
    summary = json.loads(_read("run/summary.json"))
    stats = summary["data_stats"]
    assert summary["steps"] == 3 and stats["videos_failed"] == 1
    assert stats["videos_encoded"] == stats["videos"] - 1 > 0
    assert torch.isfinite(torch.tensor(summary["final_metrics"]["loss"]))

    assert summary["rejects_csv"] == f"{uri}/rejects.csv" and summary["checkpoint"] == f"{uri}/final"
    rejects = pd.read_csv(io.BytesIO(_read("run/rejects.csv")))
    row = rejects[rejects["column"] == "chosen"]
    assert len(row) == 1 and row.iloc[0]["row"] == len(df) + 1
    assert "broken.mp4" in row.iloc[0]["value"] and "cannot open video" in row.iloc[0]["reason"]
    assert summary["rejects"] == 1
    # One worker reserves the private Ray's CPUs and runs torch on them (Ray's default: 1 CPU, 1 thread).
    assert summary["final_metrics"]["time/torch_threads"] >= min(os.cpu_count() or 1, 2)
    st = summary["startup_s"]
    assert 0 <= st["ray"] <= st["data"] < st["first_step"], st
    assert 0 < summary["final_metrics"]["time/mean_step_s"] < st["first_step"]

    keys = _keys("run/cache/")
    # every decodable video's latents and every prompt's embedding, and the key rows (the table and the one
    # rank's file the worker read; the encode stage removed its input file), nothing written locally
    tensors = [k for k in keys if k.endswith(".safetensors")]
    assert len(tensors) == stats["videos_encoded"] + stats["prompts"], keys
    tables = sorted(k for k in keys if k.startswith("run/cache/keyrows/"))
    assert len(tables) == 2 and tables[0].endswith("-rank0of1.parquet") and len(keys) == len(tensors) + 2, keys
    mirror = next((tmp_path / "staging").glob("*/run"))
    assert not (mirror / "cache").exists() and not (mirror / "ray_results").exists()

    # Ray Train's checkpoint (the adapter and DeepSpeed's state) and run snapshot are in the bucket, under
    # <URI>/ray_results/<run name>; the final adapter was exported from there and pushed with the mirror.
    ckpt = _keys("run/ray_results/run/")
    assert "run/ray_results/run/checkpoint_manager_snapshot.json" in ckpt, ckpt
    assert any(k.startswith("run/ray_results/run/checkpoint_") and k.endswith(".safetensors") for k in ckpt), ckpt
    assert "run/final/adapter/adapter_model.safetensors" in _keys("run/final/")
    assert {"run/config.yaml", "run/mlflow.db", "run/mlflow_run.json"} <= set(_keys("run/"))

    shutil.rmtree(tmp_path / "staging")  # a fresh machine (the same image: the same staging root)
    again = job(4)
    assert "resumed from checkpoint at step 3" in again.stderr, again.stderr[-3000:]
    resumed = json.loads(_read("run/summary.json"))
    assert resumed["steps"] == 4 and resumed["resumed_mlflow_run"] is True
    assert resumed["mlflow_run_id"] == summary["mlflow_run_id"]


def test_a_stage_input_file_is_written_and_removed_on_s3(s3_env):
    """The flow encode stage's input rows go through a file of their own beside the cache; on S3 it is written
    under the cache root's keyrows/ and deleted after the stage."""
    from videoalign_ray.runtime.key_table import count_rows, remove_key_table, write_key_table

    rows = [{"path": f"v{i}.mp4", "prompt": "", "key": ""} for i in range(5)]
    first = write_key_table(rows, f"s3://{BUCKET}/stage/", unique=True)
    second = write_key_table(rows, f"s3://{BUCKET}/stage/", unique=True)  # the same rows: a file of its own
    assert first != second and first.startswith(f"s3://{BUCKET}/stage/keyrows/todo-") and count_rows(first) == 5
    assert len(_keys("stage/keyrows/")) == 2
    remove_key_table(first)
    remove_key_table(first)  # already gone: fine
    assert _keys("stage/keyrows/") == [second[len(f"s3://{BUCKET}/"):]]


def _read(key: str) -> bytes:
    import boto3

    return boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_output_mirror_pushes_pulls_and_deletes_on_s3(s3_env, tmp_path):
    """The local mirror of an output URI: push uploads new and changed files (not the folders written to the
    URI directly, not temp files), removes what was removed locally, and a second machine's pull gets the same
    files; an unchanged file is not copied again either way."""
    from videoalign_ray.runtime.output_mirror import OutputMirror

    uri = f"s3://{BUCKET}/mirror/run"
    a = tmp_path / "a"
    for rel, text in {"summary.json": "{}", "final/adapter.safetensors": "w1", "final/old.txt": "x",
                      "cache/ab/k.safetensors": "latents", ".summary.json.1.tmp": "partial"}.items():
        (a / rel).parent.mkdir(parents=True, exist_ok=True)
        (a / rel).write_text(text)
    first = OutputMirror(uri, a, skip={"cache"})
    assert first.push() == {"uploaded": 2 + 1, "deleted": 0, "bytes": 2 + 2 + 1}
    assert sorted(_keys("mirror/")) == ["mirror/run/final/adapter.safetensors", "mirror/run/final/old.txt",
                                         "mirror/run/summary.json"]
    assert first.push()["uploaded"] == 0  # nothing changed
    (a / "final" / "old.txt").unlink()
    (a / "final" / "adapter.safetensors").write_text("w2")
    assert first.push() == {"uploaded": 1, "deleted": 1, "bytes": 2}
    assert _read("mirror/run/final/adapter.safetensors") == b"w2" and "mirror/run/final/old.txt" not in _keys("mirror/")

    class FailingMove:  # the upload is interrupted after its bytes went up, before they took the file's name
        def __init__(self, real):
            self.real = real

        def __getattr__(self, name):
            return getattr(self.real, name)

        def move(self, src, dest):
            raise KeyboardInterrupt

    (a / "final" / "adapter.safetensors").write_text("w3")
    real, first._fs = first._fs, FailingMove(first._fs)
    with pytest.raises(KeyboardInterrupt):
        first.push()
    first._fs = real
    assert _read("mirror/run/final/adapter.safetensors") == b"w2"  # the old version, whole
    assert not [k for k in _keys("mirror/") if k.endswith(".tmp")]  # and no temp object left
    assert first.push()["uploaded"] == 1 and _read("mirror/run/final/adapter.safetensors") == b"w3"

    b = tmp_path / "b"  # another machine
    second = OutputMirror(uri, b, skip={"cache"})
    assert second.pull() == 2
    assert (b / "final" / "adapter.safetensors").read_text() == "w3" and (b / "summary.json").read_text() == "{}"
    assert second.pull() == 0 and second.push()["uploaded"] == 0


def test_mirrored_output_points_cache_and_checkpoints_at_the_uri_and_pushes_after_a_failure(s3_env, tmp_path,
                                                                                           monkeypatch):
    from videoalign_ray.errors import ConfigError
    from videoalign_ray.pipelines.flow_dpo import FlowDPOConfig
    from videoalign_ray.runtime.job import job_run
    from videoalign_ray.runtime.output_mirror import mirrored_output

    monkeypatch.setenv("VIDEOALIGN_STAGING_DIR", str(tmp_path / "staging"))
    uri = f"s3://{BUCKET}/wrapped/dpo1"
    cfg = FlowDPOConfig(output_dir=uri + "/")
    with pytest.raises(ConfigError, match="is a URI"):
        with job_run(cfg, track=False):
            pass
    with mirrored_output(cfg) as (local_cfg, publish):
        local = Path(local_cfg.output_dir)
        assert local.name == "dpo1" and local.is_relative_to(tmp_path / "staging")  # same run name everywhere
        assert (local_cfg.cache_dir, local_cfg.storage_path) == (uri + "/cache", uri + "/ray_results")
        (local / "final").mkdir(parents=True)
        (local / "final" / "w.safetensors").write_text("w")
        summary = publish({"checkpoint": str(local / "final"), "steps": 3, "files": [str(local / "rejects.csv")],
                           "mlflow_tracking_uri": f"sqlite:///{local}/mlflow.db"})
    assert summary["checkpoint"] == uri + "/final" and summary["files"] == [uri + "/rejects.csv"]
    assert summary["mlflow_tracking_uri"] == f"sqlite:///{local}/mlflow.db"  # the store is on this machine
    assert json.loads(_read("wrapped/dpo1/summary.json")) == summary
    assert "wrapped/dpo1/final/w.safetensors" in _keys("wrapped/")

    with pytest.raises(ConfigError, match="no-such-bucket/x: cannot write and read it"), \
            mirrored_output(FlowDPOConfig(output_dir="s3://no-such-bucket/x")):
        pass

    explicit = FlowDPOConfig(output_dir=uri, cache_dir="/shared/cache")
    with pytest.raises(RuntimeError, match="boom"), mirrored_output(explicit) as (local_cfg, _):
        assert local_cfg.cache_dir == "/shared/cache" and local_cfg.storage_path == uri + "/ray_results"
        (Path(local_cfg.output_dir) / "rejects.csv").write_text("row,reason\n")
        raise RuntimeError("boom")
    assert _read("wrapped/dpo1/rejects.csv") == b"row,reason\n"  # pushed although the job failed
