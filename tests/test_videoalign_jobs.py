"""The reward jobs on a released VideoAlign folder, passed as it is (``--reward-checkpoint <folder>``): batch
scoring, the VideoGen-RewardBench evaluation and the Serve app give the scores of VideoAlign's inference (the
transcription in tests/videoalign_release.py) on the real example videos."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from videoalign_release import build_world, reference_scores, write_release

pytestmark = [pytest.mark.integration, pytest.mark.shared_data, pytest.mark.usefixtures("local_ray")]

PORT = 18437
DIMS = ("VQ", "MQ", "TA", "Overall")


@pytest.fixture(scope="module")
def release(tmp_path_factory, shared_data):
    world = build_world(tmp_path_factory.mktemp("videoalign"), shared_data)
    folder, weights, conf = write_release(world, "VideoReward", "peft", {})
    expected = reference_scores(world, weights, conf)
    return world, folder, {p: row for p, row in zip(world["paths"], expected, strict=True)}


def test_score_videos_and_eval_reward_on_the_released_folder(release, tmp_path, shared_data):
    from videoalign_ray.config import validate_config
    from videoalign_ray.pipelines.eval_reward import EvalRewardConfig, run_eval_reward
    from videoalign_ray.pipelines.score_videos import ScoreVideosConfig, run_score_videos

    world, folder, expected = release
    table = tmp_path / "videos.csv"
    pd.DataFrame({"path": world["paths"], "prompt": world["prompts"]}).to_csv(table, index=False)
    s = run_score_videos(validate_config(ScoreVideosConfig, dict(
        output_dir=str(tmp_path / "scores"), reward_checkpoint=str(folder), data=str(table), batch_size=4)))
    scored = pd.read_parquet(s["output"])
    assert s["failed"] == 0 and scored["path"].tolist() == world["paths"]
    got = scored[list(DIMS)].to_numpy()
    assert np.abs(got - np.stack([expected[p] for p in world["paths"]])).max() < 1e-4

    e = run_eval_reward(validate_config(EvalRewardConfig, dict(
        output_dir=str(tmp_path / "eval"), reward_checkpoint=str(folder),
        data=str(shared_data / "videoalign-examples" / "example.csv"))))
    assert e["pairs"] == 3 and e["rejects"] == 0
    videos = pd.read_csv(tmp_path / "eval" / "video_scores.csv")
    for row in videos.itertuples():
        assert np.abs(np.array([getattr(row, d) for d in DIMS]) - expected[row.path]).max() < 1e-4, row.path


def test_serve_reward_on_the_released_folder(release, tmp_path, shared_data):
    import httpx
    from ray import serve

    from videoalign_ray.config import validate_config
    from videoalign_ray.pipelines.serve_reward import ServeRewardConfig, run_serve_reward

    world, folder, expected = release
    cfg = validate_config(ServeRewardConfig, dict(
        output_dir=str(tmp_path / "serve"), reward_checkpoint=str(folder), port=PORT, app_name="released",
        route_prefix="/released", run_seconds=1, num_cpus=0.5, data_roots=str(shared_data)))
    try:
        summary = run_serve_reward(cfg)
        assert summary["status"].endswith("RUNNING")
        with httpx.Client(timeout=120) as client:
            assert client.get(f"http://127.0.0.1:{PORT}/released/healthz").json()["model"] == \
                "VideoReward@checkpoint-10"
            path, prompt = world["paths"][0], world["prompts"][0]
            got = client.post(f"http://127.0.0.1:{PORT}/released/score", json={"path": path, "prompt": prompt}).json()
        assert np.abs(np.array([got[d] for d in DIMS]) - expected[path]).max() < 1e-4, got
    finally:
        serve.shutdown()
