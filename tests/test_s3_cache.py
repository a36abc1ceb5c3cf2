"""The tensor cache on S3: a local S3-compatible server (moto's server mode, a real HTTP endpoint in its own
process), the cache class against it, and the Flow-DPO job with ``--cache-dir s3://...`` and its Ray Train
checkpoints at ``--storage-path s3://...``."""

import json
import os
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
def test_flow_dpo_job_with_its_cache_and_checkpoints_on_s3_and_a_broken_video(s3_env, tmp_path):
    """The Flow-DPO job (its own local Ray, whose workers inherit the AWS variables; one worker) encodes into an
    S3 cache, its training workers read their latents back from there, and Ray Train writes its checkpoints to
    ``--storage-path s3://...``; the same command with more steps resumes from the checkpoint in the bucket.
    Its table has one row whose chosen video is not a video: that row is rejected with its row number, path and
    reason, and training goes on. (One job run for these checks: each job start costs the suite about a minute
    of CPU.)"""
    import pandas as pd

    from videoalign_ray.synthetic.world import make_preference_dataset

    csv_path = make_preference_dataset(tmp_path / "data", num_pairs=12, seed=1)
    (tmp_path / "data" / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    df = pd.read_csv(csv_path)
    bad = df.iloc[0].copy()
    bad["path_A"], bad["VQ"], bad["MQ"], bad["TA"] = "videos/broken.mp4", "A", "A", "A"
    pd.concat([df, bad.to_frame().T], ignore_index=True).to_csv(tmp_path / "data" / "with_bad.csv", index=False)
    out = tmp_path / "run"

    def job(steps: int) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "jobs/flow_dpo.py", "--output-dir", str(out), "--cache-dir", f"s3://{BUCKET}/cache",
             "--storage-path", f"s3://{BUCKET}/ckpt", "--data", str(tmp_path / "data" / "with_bad.csv"),
             "--max-steps", str(steps), "--checkpoint-every", "3", "--num-samples", "0", "--num-workers", "1"],
            cwd=ROOT, env={**os.environ, **s3_env, "RAY_ADDRESS": "local"}, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    job(3)
    summary = json.loads((out / "summary.json").read_text())
    stats = summary["data_stats"]
    assert summary["steps"] == 3 and stats["videos_failed"] == 1
    assert stats["videos_encoded"] == stats["videos"] - 1 > 0
    assert torch.isfinite(torch.tensor(summary["final_metrics"]["loss"]))

    rejects = pd.read_csv(summary["rejects_csv"])
    row = rejects[rejects["column"] == "chosen"]
    assert len(row) == 1 and row.iloc[0]["row"] == len(df) + 1
    assert "broken.mp4" in row.iloc[0]["value"] and "cannot open video" in row.iloc[0]["reason"]
    assert summary["rejects"] == 1
    # One worker reserves the private Ray's CPUs and runs torch on them (Ray's default: 1 CPU, 1 thread).
    assert summary["final_metrics"]["time/torch_threads"] >= min(os.cpu_count() or 1, 2)
    st = summary["startup_s"]
    assert 0 <= st["ray"] <= st["data"] < st["first_step"], st
    assert 0 < summary["final_metrics"]["time/mean_step_s"] < st["first_step"]

    keys = _keys("cache/")
    # every decodable video's latents and every prompt's embedding, and the key rows (the table and the one
    # rank's file the worker read; the encode stage removed its input file), nothing written locally
    tensors = [k for k in keys if k.endswith(".safetensors")]
    assert len(tensors) == stats["videos_encoded"] + stats["prompts"], keys
    tables = sorted(k for k in keys if k.startswith("cache/keyrows/"))
    assert len(tables) == 2 and tables[0].endswith("-rank0of1.parquet") and len(keys) == len(tensors) + 2, keys
    assert not (out / "cache").exists()

    # Ray Train's checkpoint (the adapter and DeepSpeed's state) and run snapshot are in the bucket, under
    # <storage-path>/<run name>, and nothing of them locally; the final adapter was exported from there.
    ckpt = _keys("ckpt/run/")
    assert "ckpt/run/checkpoint_manager_snapshot.json" in ckpt, ckpt
    assert any(k.startswith("ckpt/run/checkpoint_") and k.endswith(".safetensors") for k in ckpt), ckpt
    assert not (out / "ray_results").exists()
    assert (out / "final" / "adapter" / "adapter_model.safetensors").is_file()
    again = job(4)
    assert "resumed from checkpoint at step 3" in again.stderr, again.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 4


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
