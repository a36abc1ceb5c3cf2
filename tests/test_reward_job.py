"""VideoReward jobs end to end on a local Ray: train (with a killed worker), evaluate, score."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from videoalign_ray.config import validate_config

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("local_ray")]


def _train(out: Path, **kw):
    from videoalign_ray.pipelines.train_reward import TrainRewardConfig, run_train_reward

    values = dict(output_dir=str(out), max_steps=6, checkpoint_every=3, train_pairs=24, val_pairs=12, batch_size=4,
                  log_every=1, seed=1, warmup_steps=2)  # the cosine schedule moves the lr at every one of the steps
    values.update(kw)
    return run_train_reward(validate_config(TrainRewardConfig, values))


def test_videoreward_learns_quality_on_held_out_prompts(tmp_path):
    """Learning, not just running: 100 steps of 2 workers x 16 pairs (256 pairs of the train prompts) lift
    accuracy without ties on the held-out prompts well above chance (0.5) for MQ and VQ. (TA needs the full
    default run; docs/experiments.md.) Measured alone on the 2-core machine (2026-11-23), seeds 0 / 1 / 2:
    held-out MQ 1.000 / 1.000 / 0.962, VQ 0.726 / 0.761 / 0.792 in 162-165 s. 250 steps (this test until
    then) reached VQ 0.961 / 0.978 / 0.979 in 288-310 s; VQ is learned later than MQ, so its bar here is lower."""
    s = _train(tmp_path / "learn", max_steps=100, checkpoint_every=100, train_pairs=256, val_pairs=64,
               batch_size=16, warmup_steps=6, log_every=50, seed=0)
    acc = s["val_accuracy"]
    assert acc["acc_MQ"] >= 0.85, acc
    assert acc["acc_VQ"] >= 0.65, acc


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, local_ray):
    """One uninterrupted 6-step run: the kill test's baseline and the eval/score tests' checkpoint."""
    return _train(tmp_path_factory.mktemp("reward") / "clean")


def test_killed_worker_resumes_to_same_result(tmp_path, clean_run):
    """A rank SIGKILLed at step 4 of 6: the group restarts, and the final weights and validation accuracy equal
    those of an uninterrupted run with the same seed (each run renders its own synthetic data; lossless
    encoding makes those identical)."""
    clean = clean_run
    faulty = _train(tmp_path / "faulty", fail_at_step=4)
    assert (tmp_path / "faulty" / ".fault_injected").is_file(), "the fault was never injected"
    assert faulty["steps"] == clean["steps"] == 6
    assert faulty["val_accuracy"] == clean["val_accuracy"]
    a = load_file(Path(clean["checkpoint"]) / "model.safetensors")
    b = load_file(Path(faulty["checkpoint"]) / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-5
    rc = json.loads((Path(faulty["checkpoint"]) / "reward_config.json").read_text())
    assert rc["norm_std"] != [1.0, 1.0, 1.0] and rc["fps"] == 8.0


def test_eval_and_score_jobs(tmp_path, shared_data, clean_run):
    from videoalign_ray.pipelines.eval_reward import EvalRewardConfig, run_eval_reward
    from videoalign_ray.pipelines.score_videos import ScoreVideosConfig, run_score_videos

    trained = clean_run
    s = run_eval_reward(validate_config(EvalRewardConfig, dict(
        output_dir=str(tmp_path / "ev"), reward_checkpoint=trained["checkpoint"],
        data=str(shared_data / "fetv" / "pairs.csv"))))
    assert s["pairs"] == 52 and s["rejects"] == 0
    preds = pd.read_csv(tmp_path / "ev" / "pair_predictions.csv")
    assert len(preds) == 52 and preds["label_MQ"].isin([1, -100]).all()
    scores = pd.read_csv(tmp_path / "ev" / "video_scores.csv")
    assert len(scores) == 24  # each unique video scored once
    # accuracy without ties on MQ = share of TQ pairs whose margin is positive
    tq = preds[preds["label_MQ"] == 1]
    assert s["accuracy"]["acc_MQ"] == pytest.approx((tq["margin_MQ"] > 0).mean())

    assert s["overall_label"] == "majority of VQ/MQ/TA"  # the table has no Overall column

    # A table with its own Overall column (VideoGen-RewardBench has one) is scored against that column: here
    # the column is the opposite of the VQ/MQ/TA majority on every pair, so the accuracy flips against the
    # majority-derived label of the same pairs (computed from that run's own predictions, not another job run).
    from videoalign_ray.reward.train_loop import accuracy_table

    example = shared_data / "videoalign-examples"
    table = pd.read_csv(example / "example.csv")
    for col in ("path_A", "path_B"):
        table[col] = [str((example / p).resolve()) for p in table[col]]
    table.assign(Overall=["A", "B", "B"]).to_csv(tmp_path / "with_overall.csv", index=False)  # majority: B, A, A
    ov = run_eval_reward(validate_config(EvalRewardConfig, dict(
        output_dir=str(tmp_path / "ev_overall"), reward_checkpoint=trained["checkpoint"], data=str(tmp_path / "with_overall.csv"))))
    assert ov["overall_label"] == "table column"
    preds = pd.read_csv(tmp_path / "ev_overall" / "pair_predictions.csv")
    assert preds["label_Overall"].tolist() == [1, -1, -1]
    dims = ("VQ", "MQ", "TA")
    derived = accuracy_table(preds[[f"raw_A_{d}" for d in dims]].to_numpy(), preds[[f"raw_B_{d}" for d in dims]].to_numpy(),
                             preds[[f"label_{d}" for d in dims]].to_numpy())
    assert ov["accuracy"]["acc_Overall"] == pytest.approx(1 - derived["acc_Overall"])

    (tmp_path / "vids").mkdir()
    for p in (shared_data / "odd-encodings" / "mediabunny").glob("*.mp4"):
        (tmp_path / "vids" / p.name).symlink_to(p)
    sc = run_score_videos(validate_config(ScoreVideosConfig, dict(
        output_dir=str(tmp_path / "sc"), reward_checkpoint=trained["checkpoint"], data=str(tmp_path / "vids"))))
    table = pd.read_parquet(sc["output"])
    assert sc["failed"] == 1  # annex-b.mp4 is truncated: a reason, NaN scores, not dropped
    bad = table[table["error"].notna()]
    assert "truncated" in bad.iloc[0]["error"] and torch.isnan(torch.tensor(bad.iloc[0]["VQ"]))
    ok = table[table["error"].isna()]
    assert len(ok) == len(table) - 1 and ok["error"].isna().all()  # null, not "", on success
    assert (ok["Overall"] - (ok["VQ"] + ok["MQ"] + ok["TA"])).abs().max() < 1e-4

    # rows come back in the table's order (not sorted by path), with two actors and one video per batch
    vids = sorted((shared_data / "videoalign-examples").rglob("*.mp4"))[::-1]
    pd.DataFrame({"path": [str(v) for v in vids], "prompt": [f"prompt {i}" for i in range(len(vids))]}).to_csv(
        tmp_path / "order.csv", index=False)
    so = run_score_videos(validate_config(ScoreVideosConfig, dict(
        output_dir=str(tmp_path / "so"), reward_checkpoint=trained["checkpoint"], data=str(tmp_path / "order.csv"),
        batch_size=1, scorer_actors=2)))
    ordered = pd.read_parquet(so["output"])
    assert len(vids) >= 3 and ordered["path"].tolist() == [str(v.resolve()) for v in vids]
    assert ordered["prompt"].tolist() == [f"prompt {i}" for i in range(len(vids))]
