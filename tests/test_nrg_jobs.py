"""Flow-RWR and Flow-NRG jobs end to end on a local Ray (tiny sizes): RWR with rewards from a VideoReward
checkpoint, the latent reward job, generation with a local guide, and the errors users hit first."""

import json
from pathlib import Path

import pandas as pd
import pytest

from videoalign_ray.config import validate_config
from videoalign_ray.errors import ConfigError

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("local_ray")]


def test_rwr_job_with_rewards_from_a_videoreward_checkpoint(tmp_path):
    from mlflow.tracking import MlflowClient

    from videoalign_ray.pipelines.flow_dpo import FlowRWRConfig, run_flow_job
    from videoalign_ray.serve.scorer import make_untrained_checkpoint
    from videoalign_ray.synthetic.world import make_preference_dataset

    csv = make_preference_dataset(tmp_path / "data", num_pairs=6, seed=2)
    ckpt = make_untrained_checkpoint(tmp_path / "reward", seed=1)
    s = run_flow_job(validate_config(FlowRWRConfig, dict(
        data=str(csv), output_dir=str(tmp_path / "rwr"), reward_checkpoint=str(ckpt), reward_weights="0,0,1",
        rwr_normalize="batch_softmax", max_steps=2, checkpoint_every=2, num_samples=0, num_workers=1, batch_size=2,
    )))
    assert s["steps"] == 2 and s["pairs_used"] == 6 and s["rejects"] == 0
    run = MlflowClient(s["mlflow_tracking_uri"]).get_run(s["mlflow_run_id"])
    assert run.data.params["objective"] == "rwr"
    assert run.data.metrics["weight_mean"] == pytest.approx(1.0, abs=1e-5)  # batch softmax keeps the mean at 1
    assert "weight_max" in run.data.metrics and (tmp_path / "rwr" / "final" / "adapter").is_dir()


def test_rwr_without_rewards_is_a_clear_error(tmp_path):
    from videoalign_ray.data.io import DataError
    from videoalign_ray.pipelines.flow_dpo import FlowRWRConfig, run_flow_job
    from videoalign_ray.synthetic.world import make_preference_dataset

    csv = make_preference_dataset(tmp_path / "data", num_pairs=2, seed=2)
    df = pd.read_csv(csv)
    df.drop(columns=[c for c in df.columns if c.startswith("MOS_")]).to_csv(tmp_path / "no_mos.csv", index=False)
    (tmp_path / "videos").symlink_to(tmp_path / "data" / "videos")
    with pytest.raises(DataError, match=r"row 1: no MOS_A_VQ .*--reward-checkpoint"):
        run_flow_job(validate_config(FlowRWRConfig, dict(data=str(tmp_path / "no_mos.csv"),
                                                          output_dir=str(tmp_path / "out"), max_steps=1)))


def test_latent_reward_job_then_guided_generation(tmp_path):
    from videoalign_ray.pipelines.generate import GenerateConfig, run_generate
    from videoalign_ray.pipelines.train_latent_reward import LatentRewardConfig, run_latent_reward

    s = run_latent_reward(validate_config(LatentRewardConfig, dict(
        output_dir=str(tmp_path / "lr"), train_pairs=12, val_pairs=6, max_steps=3, checkpoint_every=3,
        num_workers=2, batch_size=2, num_blocks=1,
    )))
    assert s["steps"] == 3 and s["val_pairs"] == 6
    assert set(s["val_accuracy"]) == {f"t{t}/{d}" for t in ("0", "0.5", "0.9") for d in ("VQ", "MQ", "TA")}
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left to right\n\nsomething not in the world\n")
    g = run_generate(validate_config(GenerateConfig, dict(
        output_dir=str(tmp_path / "gen"), prompts=str(prompts), samples_per_prompt=2, steps=4,
        latent_reward=s["checkpoint"], weights="0,0,1", guidance_scale=1.0,
    )))
    table = pd.read_csv(g["scores_csv"])
    assert len(table) == 4 and g["guide"] == "local"
    assert table["gt_TA"].notna().sum() == 2  # ground truth only for the world's prompt
    assert all((tmp_path / "gen" / "videos").joinpath(p.split("/")[-1]).stat().st_size > 0 for p in table["path"])
    assert json.loads((tmp_path / "gen" / "summary.json").read_text())["videos"] == 4
    with pytest.raises(ConfigError, match="needs exactly one of latent_reward"):  # refused by the config
        validate_config(GenerateConfig, dict(output_dir=str(tmp_path / "g2"), guidance_scale=1.0))


def test_training_rows_follow_the_table_order(tmp_path):
    """encode_pairs keeps the table's row order (pair ids hash absolute paths; ordering by them made two copies
    of one dataset in different folders train on different batches)."""
    from videoalign_ray.data.io import load_pairs
    from videoalign_ray.flow.model import PRESETS, TINY_WORLD_ASSET, component_id
    from videoalign_ray.flow.pipeline import EncodeSpec, encode_pairs
    from videoalign_ray.synthetic.world import make_preference_dataset

    preset = PRESETS["tiny-world"]
    pairs = load_pairs(make_preference_dataset(tmp_path / "d", num_pairs=10, seed=4), keep_ties=True).pairs
    assert [p.row for p in pairs] == list(range(1, 11))
    assert [p.pair_id for p in pairs] != sorted(p.pair_id for p in pairs)  # the old order would differ
    spec = EncodeSpec(model_dir=str(TINY_WORLD_ASSET), cache_dir=str(tmp_path / "cache"),
                      num_frames=preset.num_frames, height=preset.height, width=preset.width,
                      max_text_tokens=preset.max_text_tokens, vae_id=component_id(TINY_WORLD_ASSET, "vae"),
                      text_encoder_id="all-MiniLM-L6-v2")
    encoded = encode_pairs(pairs, spec, {p.pair_id: {"row": p.row} for p in pairs})
    rows = encoded.dataset.take_all()
    assert [int(r["row"]) for r in rows] == list(range(1, 11))
    # The stage's input rows went through a file of their own, removed after the stage: only the key rows stay.
    assert [f.name for f in (tmp_path / "cache" / "keyrows").iterdir()] == [Path(encoded.table).name]

    # One actor pool encoded videos and prompts: its cache entries equal the encoders called directly.
    import numpy as np
    import torch

    from videoalign_ray.data.cache import TensorCache
    from videoalign_ray.data.video import expand_frames, load_video
    from videoalign_ray.flow.model import TextEncoder, encode_frames, load_vae

    keys = encoded.rows.take_all()
    cache, first = TensorCache(spec.cache_dir), pairs[0]
    video = load_video(first.chosen, num_frames=preset.num_frames)
    assert video.distinct.shape[1:3] == (preset.height, preset.width)  # the world renders at the preset's size
    with torch.no_grad():
        latents = encode_frames(load_vae(str(TINY_WORLD_ASSET)), np.ascontiguousarray(expand_frames(video.distinct, video.inverse)))
        embeds = TextEncoder(str(TINY_WORLD_ASSET), preset.max_text_tokens, "cpu").encode([first.prompt])[0]
    torch.testing.assert_close(cache.get(str(keys[0]["chosen_key"])), latents, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.get(str(keys[0]["prompt_embeds_key"])), embeds, atol=1e-5, rtol=1e-5)
    assert encoded.stats["videos_encoded"] == encoded.stats["videos"] and encoded.stats["prompts"] > 1
    again = encode_pairs(pairs, spec)  # everything cached: no Ray Data stage, the same keys
    assert again.stats["videos_cached"] == again.stats["videos"]
    assert again.rows.take_all() == [{k: v for k, v in r.items() if k != "row"} for r in keys]
