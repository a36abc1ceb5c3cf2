"""The online Flow-DPO job on a `ray start --head` cluster: submitted with `ray job submit` (a generation actor
dies on the way; round 2's reference is round 1's policy), then run as a plain driver that is SIGKILLed in
round 2's generation and again in its training, and resumed: the pair store equals the uninterrupted run's row
for row, the rerun in a private local Ray beside that cluster; and a job that joins the cluster but cannot
place its training workers fails in bounded time with a message (issue 11: never wait silently).

(This module replaced the flow_dpo-only `ray job submit` test: the online job runs a Flow-DPO training round
through the same run_flow_job under the submitted driver.)
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from ray_head import BIN, ray_head

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
WORLD = ["a blue square moving bottom to top", "a red square moving top to bottom",
         "a blue circle moving top to bottom", "a yellow circle moving top to bottom",
         "a red circle moving bottom to top", "a yellow square moving top to bottom"]
BAD = ["", WORLD[1], "a " + "very " * 30 + "long prompt", "a purple elephant dancing"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    prompts = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    prompts.write_text("\n".join(WORLD[:3] + BAD[:2] + WORLD[3:] + BAD[2:]) + "\n")
    with ray_head(2, RAY_AUTH_MODE="token") as head:  # the CLI sends ~/.ray/auth_token
        yield {**head, "prompts": str(prompts)}


def _args(out: Path, prompts: str) -> list[str]:
    return ["jobs/online_dpo.py", "--output-dir", str(out), "--prompts", prompts, "--rounds", "2",
            "--samples-per-prompt", "2", "--steps-per-round", "2", "--batch-size", "1", "--sample-steps", "8",
            "--eval-samples-per-prompt", "0", "--num-workers", "1",  # 3 (unplaceable): the last test
            "--reference", "previous"]


def _attempts(out: Path, round_: int) -> dict[int, int]:
    counts: dict[int, int] = {}
    for line in (out / "samples" / f"round={round_:03d}" / "attempts.log").read_text().splitlines():
        idx = int(line.split("\t")[0])
        counts[idx] = counts.get(idx, 0) + 1
    return counts


def _pairs(out: Path) -> pd.DataFrame:
    from videoalign_ray.online.store import PairStore

    df = PairStore(out / "pairs").read()
    for col in ("chosen", "rejected"):  # paths relative to the run's folder; latent keys hash paths and mtimes
        df[col] = [str(Path(p).relative_to(out)) for p in df[col]]
    return df.drop(columns=["chosen_latent_key", "rejected_latent_key"])


@pytest.fixture(scope="module")
def submitted(cluster, tmp_path_factory):
    """The uninterrupted run, through `ray job submit`; the actor generating round 1's prompt 2 dies once."""
    out = tmp_path_factory.mktemp("online") / "clean"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", cluster["dash"], "--working-dir", str(ROOT), "--",
           "python", *_args(out, cluster["prompts"]), "--fail-generator-on", "1,2"]
    deadline = time.monotonic() + 120
    while True:
        proc = subprocess.run(cmd, env=cluster["env"], capture_output=True, text=True, timeout=900, cwd=ROOT)
        # the dashboard can answer before the job agent (started with the raylet) registers: nothing was submitted
        if "No available agent" not in proc.stdout + proc.stderr or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout + proc.stderr
    return out


def test_submitted_run_survives_an_actor_death_and_logs_its_rounds(submitted):
    out = submitted
    assert (out / ".generator_fault").is_file(), "the actor was never killed"
    assert _attempts(out, 1) == {0: 1, 1: 1, 2: 2, 3: 1, 4: 1, 5: 1}  # the killed group redone once, never twice
    assert _attempts(out, 2) == dict.fromkeys(range(6), 1)
    rejects = pd.read_csv(out / "rejects.csv", keep_default_na=False)
    assert rejects["row"].tolist() == [4, 5, 9, 10]
    assert rejects["reason"].tolist()[:2] == ["empty prompt", "duplicate of row 2"]
    assert "over the text encoder's 16" in rejects["reason"][2] and "no ground-truth" in rejects["reason"][3]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2] and summary["prompts"] == 6
    assert all(r["pairs"] + r["ties"] == 6 for r in summary["rounds"])
    r2 = summary["rounds"][1]
    assert r2["sync"]["actors"] == 2 and r2["sync"]["bytes"] > 0
    assert r2["policy"].endswith("round=002/train/final")
    # round 2's training started from round 1's adapter and both are diffusers-loadable LoRA files
    assert (Path(r2["policy"]) / "pytorch_lora_weights.safetensors").is_file()
    # --reference previous: round 2's reference is round 1's policy, the adapter it starts from
    cfg1 = yaml.safe_load((out / "rounds" / "round=001" / "train" / "config.yaml").read_text())
    cfg2 = yaml.safe_load((out / "rounds" / "round=002" / "train" / "config.yaml").read_text())
    assert cfg1["reference_weights"] is None and cfg1["init_weights"] is None
    assert cfg2["reference_weights"] == cfg2["init_weights"] == str(out / "rounds" / "round=001" / "train" / "final")
    train = json.loads((out / "rounds" / "round=002" / "train" / "summary.json").read_text())
    assert train["data_stats"]["videos_cached"] == train["data_stats"]["videos"]  # generated latents, no re-encode

    from mlflow.tracking import MlflowClient

    client = MlflowClient(summary["mlflow_tracking_uri"])
    parent = client.get_run(summary["mlflow_run_id"])
    assert {"pairs", "gt_mean_TA", "seconds_generate", "seconds_train", "sync_bytes"} <= set(parent.data.metrics)
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "pairs")] == [1, 2]
    children = [client.get_run(r["train_run_id"]) for r in summary["rounds"]]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)


def _run_until(cluster, out: Path, condition, what: str, timeout_s: float = 600) -> None:
    """Start the job as a driver on the cluster and SIGKILL its process group once ``condition()`` holds."""
    env = {**cluster["env"], "RAY_ADDRESS": cluster["gcs"]}
    proc = subprocess.Popen([sys.executable, *_args(out, cluster["prompts"])], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    try:
        while not condition():
            assert proc.poll() is None, f"the job ended (rc {proc.returncode}) before {what}"
            assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def test_driver_killed_in_generation_then_in_training_resumes_to_the_same_pairs(cluster, submitted, tmp_path):
    out = tmp_path / "killed"
    round2 = out / "samples" / "round=002"
    _run_until(cluster, out, lambda: any(round2.glob("p*.json")), "a finished group of round 2")
    done_before = {int(p.stem[1:]) for p in round2.glob("p*.json")}
    assert sorted(json.loads((out / "pairs" / ".manifest.json").read_text())["rounds"]) == ["1"]

    ckpts = out / "rounds" / "round=002" / "train" / "ray_results"
    _run_until(cluster, out, lambda: any(ckpts.glob("*/checkpoint_*")), "a round-2 training checkpoint")
    assert not (out / "rounds" / "round=002" / "summary.json").exists()

    # The rerun starts a private local Ray (RAY_ADDRESS=local) beside the cluster the killed drivers used: what
    # is reused lives in the output folder, not in a cluster. Ray-internal lookups in its workers (Ray Train's
    # placement-group cleaner asks the state API whether the controller lives) see two GCS processes on this
    # machine and must pick the job's own cluster, not the other (a bug once: the cleaner joined the other one).
    env = {**cluster["env"], "RAY_ADDRESS": "local"}
    proc = subprocess.run([sys.executable, *_args(out, cluster["prompts"])], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ours = re.search(r"started a private local Ray at (\S+:\d+) \(logs under /tmp/vr-", proc.stderr)
    assert ours, proc.stderr[:3000]
    picked = re.findall(r"Connecting to latest cluster at (\S+:\d+)\.", proc.stderr)
    assert picked, "expected the workers' cluster lookup in the log (two clusters run on this machine)"
    assert set(picked) == {ours.group(1)}, (set(picked), ours.group(1))
    attempts = _attempts(out, 2)
    assert all(attempts[i] == 1 for i in done_before), (attempts, done_before)  # finished work reused
    assert _attempts(out, 1) == dict.fromkeys(range(6), 1)  # round 1 was never redone
    pd.testing.assert_frame_equal(_pairs(out), _pairs(submitted))
    assert json.loads((out / "rounds" / "round=002" / "train" / "summary.json").read_text())["steps"] == 2


def test_a_job_that_cannot_place_its_training_workers_fails_in_bounded_time_with_a_message(cluster, tmp_path):
    """A plain `python jobs/online_dpo.py` (no RAY_ADDRESS) on a machine where someone ran `ray start --head`
    joins that cluster (Ray's own rule: the latest `ray start`). In the separate placement it asks for 3 Ray Train
    workers of 1 CPU on this
    2-CPU cluster, a placement Ray Train itself waits for forever. The job must say which cluster it joined and
    fail within its --train-timeout-s with an error that names the round and the free resources, leaving the
    round's pairs committed and no policy published."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(WORLD[:4]) + "\n")  # 4 pairs: enough rows for 3 workers
    out = tmp_path / "out"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "jobs/online_dpo.py", "--output-dir", str(out), "--prompts", str(prompts), "--rounds", "1",
         "--samples-per-prompt", "2", "--steps-per-round", "2", "--batch-size", "1", "--sample-steps", "4",
         "--eval-samples-per-prompt", "0", "--num-workers", "3", "--train-timeout-s", "10", "--placement", "separate"],
        cwd=ROOT, env=cluster["env"], capture_output=True, text=True, timeout=330)
    took, err = time.monotonic() - start, proc.stderr
    assert proc.returncode != 0, err[-3000:]
    assert re.search(r"joined the Ray cluster at \S+:\d+ \(the latest `ray start` on this machine\): \d/2 CPUs", err), \
        err[:3000]
    assert "'round-001'" in err and "did not finish within 10 s" in err, err[-3000:]
    assert "3 workers" in err and "CPUs" in err, err[-3000:]
    assert took < 300, took
    assert not (out / "rounds" / "round=001" / "summary.json").exists()
    assert (out / "pairs" / ".manifest.json").exists()
