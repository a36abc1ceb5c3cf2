"""Online loop pieces without Ray: pair selection (hand-computed), seeds, the pair store, prompt rejects."""

import json

import numpy as np
import pandas as pd
import pytest

from videoalign_ray.data.io import load_pairs, read_table
from videoalign_ray.online.prompts import validate_prompts
from videoalign_ray.online.selection import sample_seed, select_pairs, weighted_reward
from videoalign_ray.online.store import PairStore


def test_best_worst_picks_the_extremes_of_the_weighted_reward():
    # weighted with (1, 0, 2): [0.1+0.6, 0.9+0.2, 0.5+1.4, 0.3+0.0] = [0.7, 1.1, 1.9, 0.3]
    r = np.array([[0.1, 0.9, 0.3], [0.9, 0.0, 0.1], [0.5, 0.5, 0.7], [0.3, 0.2, 0.0]])
    np.testing.assert_allclose(weighted_reward(r, (1, 0, 2)), [0.7, 1.1, 1.9, 0.3])
    sel = select_pairs(r, (1, 0, 2))
    assert [(c, j) for c, j, _ in sel.pairs] == [(2, 3)] and sel.pairs[0][2] == pytest.approx(1.6)
    assert select_pairs(r, (1, 0, 2), min_margin=1.7).below_margin == 1
    tie = select_pairs(np.full((3, 3), 0.4), (1, 1, 1))
    assert tie.pairs == [] and tie.ties == 1 and tie.below_margin == 0


def test_all_above_margin_orders_each_pair_and_counts_the_rest():
    r = np.array([[0.2, 0, 0], [0.5, 0, 0], [0.5, 0, 0], [0.3, 0, 0]])  # weights (1, 0, 0)
    sel = select_pairs(r, (1, 0, 0), "all-above-margin", min_margin=0.15)
    # candidates: (1,0) .3, (2,0) .3, (3,0) .1 below, (1,2) tie, (1,3) .2, (2,3) .2
    assert sorted((c, j) for c, j, _ in sel.pairs) == [(1, 0), (1, 3), (2, 0), (2, 3)]
    assert sel.ties == 1 and sel.below_margin == 1
    assert all(m >= 0.15 for *_, m in sel.pairs)
    with pytest.raises(ValueError, match="at least 2"):
        select_pairs(r[:1], (1, 1, 1))
    with pytest.raises(ValueError, match="non-finite"):
        select_pairs(np.array([[np.nan, 0, 0], [0, 0, 0]]), (1, 1, 1))


def test_seeds_are_reproducible_and_distinct():
    seeds = {sample_seed(0, r, p, k) for r in range(1, 4) for p in range(50) for k in range(4)}
    assert len(seeds) == 600 and all(0 <= s < 2**31 for s in seeds)
    assert sample_seed(5, 2, 3, 1) == sample_seed(5, 2, 3, 1) != sample_seed(6, 2, 3, 1)


def _rows(round_, tmp_path, n=2):
    vids = []
    for i in range(2 * n):
        p = tmp_path / f"r{round_}_{i}.mp4"
        p.write_bytes(b"x")
        vids.append(str(p))
    return pd.DataFrame({"round": round_, "prompt": [f"p{i}" for i in range(n)], "chosen": vids[:n],
                         "rejected": vids[n:], "margin": [0.5] * n})


def test_pair_store_commits_rounds_atomically_and_reads_only_committed(tmp_path):
    store = PairStore(tmp_path / "pairs")
    assert store.committed() == {}
    store.commit(1, _rows(1, tmp_path), {"policy_version": 0})
    store.commit(2, _rows(2, tmp_path, 3), {"policy_version": 1})
    # a folder left by a crash between rename and manifest, and a temp folder: neither is read
    (tmp_path / "pairs" / "round-003").mkdir()
    _rows(3, tmp_path).to_parquet(tmp_path / "pairs" / "round-003" / "part-000.parquet")
    (tmp_path / "pairs" / ".round-004-tmp").mkdir()
    assert sorted(store.committed()) == [1, 2] and store.committed()[2]["pairs"] == 3
    assert store.read()["round"].tolist() == [1, 1, 2, 2, 2]
    assert store.read([2])["prompt"].tolist() == ["p0", "p1", "p2"]
    table = read_table(tmp_path / "pairs")  # what jobs/flow_dpo.py --data <out>/pairs reads
    assert len(table) == 5 and table["round"].tolist() == [1, 1, 2, 2, 2]
    loaded = load_pairs(tmp_path / "pairs")
    assert len(loaded.pairs) == 5 and not loaded.rejects
    with pytest.raises(ValueError, match="round == 4"):
        store.commit(4, _rows(3, tmp_path), {})
    with pytest.raises(KeyError, match=r"\[3\]"):
        store.read([3])
    manifest = json.loads((tmp_path / "pairs" / ".manifest.json").read_text())
    assert set(manifest["rounds"]) == {"1", "2"}


def test_plain_folders_read_every_table_in_name_order(tmp_path):
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "b.csv", index=False)
    pd.DataFrame({"a": [0]}).to_parquet(tmp_path / "a.parquet")
    (tmp_path / "_skip.csv").write_text("a\n9\n")
    assert read_table(tmp_path)["a"].astype(int).tolist() == [0, 1]


def test_bad_prompts_are_rejected_with_row_and_reason():
    raw = ["a red circle", "", "  a red circle ", "x " * 40, "a blue square", "unknown thing"]
    kept, rejects = validate_prompts(raw, lambda p: len(p.split()), 16, known={"a red circle", "a blue square", "x"})
    assert kept == ["a red circle", "a blue square"]
    reasons = {r.row: r.reason for r in rejects}
    assert reasons[2] == "empty prompt" and reasons[3] == "duplicate of row 1"
    assert "40 tokens, over the text encoder's 16" in reasons[4] and "no ground-truth" in reasons[6]


def test_guidance_without_a_reward_endpoint_is_refused():
    from pydantic import ValidationError

    from videoalign_ray.pipelines.online_dpo import OnlineDPOConfig

    with pytest.raises(ValidationError, match="reward-endpoint"):
        OnlineDPOConfig(guidance_scale=1.0)
    assert OnlineDPOConfig(guidance_scale=1.0, reward_endpoint="reward").guidance_scale == 1.0
    assert OnlineDPOConfig().guidance_scale == 0.0


def test_guidance_weights_default_to_the_pair_weights_and_can_differ():
    from pydantic import ValidationError

    from videoalign_ray.pipelines.online_dpo import OnlineDPOConfig

    guided = dict(guidance_scale=1.0, reward_endpoint="reward", reward_weights="0,0,1")
    assert OnlineDPOConfig(**guided).guide_weights == (0.0, 0.0, 1.0)
    assert OnlineDPOConfig(**guided, guidance_weights="0.5,0,1").guide_weights == (0.5, 0.0, 1.0)
    with pytest.raises(ValidationError, match="guidance_weights"):
        OnlineDPOConfig(**guided, guidance_weights="1,1")


def test_guided_vs_unguided_pairs_each_guided_sample_with_its_twin():
    # K = 6: samples 0-2 guided, 3-5 their unguided twins; weights (0, 0, 1): TA decides
    r = np.array([[0, 0, 0.8], [0, 0, 0.4], [0, 0, 0.5], [0, 0, 0.3], [0, 0, 0.6], [0, 0, 0.5]])
    sel = select_pairs(r, (0, 0, 1), "guided-vs-unguided", min_margin=0.1)
    # twins: (0,3) guided wins by .5; (1,4) unguided wins by .2; (2,5) tie
    assert [(c, j) for c, j, _ in sel.pairs] == [(0, 3), (4, 1)]
    assert [m for *_, m in sel.pairs] == pytest.approx([0.5, 0.2])
    assert sel.ties == 1 and sel.below_margin == 0
    assert select_pairs(r, (0, 0, 1), "guided-vs-unguided", min_margin=0.3).below_margin == 1
    with pytest.raises(ValueError, match="even number"):
        select_pairs(r[:5], (0, 0, 1), "guided-vs-unguided")


def test_guided_vs_unguided_needs_guidance_and_an_even_k():
    from pydantic import ValidationError

    from videoalign_ray.pipelines.online_dpo import OnlineDPOConfig

    ok = dict(guidance_scale=1.0, reward_endpoint="reward", pair_rule="guided-vs-unguided", samples_per_prompt=4)
    assert OnlineDPOConfig(**ok).pair_rule == "guided-vs-unguided"
    for bad in ({"samples_per_prompt": 5}, {"guidance_scale": 0.0, "reward_endpoint": None}):
        with pytest.raises(ValidationError, match="guided-vs-unguided"):
            OnlineDPOConfig(**{**ok, **bad})


def test_a_split_group_guides_only_its_first_half(tmp_path):
    """GeneratorSpec.guide_first_half: the guide sees the first half of the group only; the second half, with
    the same seeds, equals an unguided sampling of those seeds, and the guided half differs from it."""
    import torch

    from videoalign_ray.flow.model import PRESETS, TINY_WORLD_ASSET, component_id
    from videoalign_ray.flow.pipeline import EncodeSpec
    from videoalign_ray.flow.sampling import SamplingSettings
    from videoalign_ray.online.generation import GenerationActor, GeneratorSpec

    if not (TINY_WORLD_ASSET / "transformer").is_dir():
        pytest.skip("tiny-world asset not built")
    preset = PRESETS["tiny-world"]
    enc = EncodeSpec(model_dir=str(TINY_WORLD_ASSET), cache_dir=str(tmp_path / "cache"), num_frames=preset.num_frames,
                     height=preset.height, width=preset.width, max_text_tokens=preset.max_text_tokens,
                     vae_id=component_id(TINY_WORLD_ASSET, "vae"), text_encoder_id="all-MiniLM-L6-v2")
    calls = []

    def guide(x, t, prompt_embeds, weights):  # a constant push: the guided half must move
        calls.append(x.shape[0])
        return torch.ones_like(x)

    def run(split: bool, seeds: list[int], name: str):
        spec = GeneratorSpec(encode=enc, fps=preset.fps, sampling=SamplingSettings(steps=3), guidance_scale=1.0, weights=(0, 0, 1),
                             guide_first_half=split)
        actor = GenerationActor(spec, str(tmp_path / name))
        actor.guide = guide  # in the job: the served app's guide(); here a local function
        rec = actor.generate({"round": 1, "prompt_index": 0, "prompt": "a red circle moving left to right",
                              "seeds": seeds, "version": 0, "scene": None}, [None])
        return torch.stack([actor.cache.get(s["latent_key"]) for s in rec["samples"]]), rec

    # GenerationActor turns autograd off for its (actor) process; the block restores this process's mode, else
    # later tests in the same pytest worker run without autograd
    with torch.enable_grad():
        split, rec = run(True, [11, 12, 11, 12], "split")
        assert calls and set(calls) == {2} and rec["spec"]["guide_first_half"]
        calls.clear()
        plain, _ = run(False, [11, 12], "guided")  # guided, whole group: the guide sees both samples
        assert set(calls) == {2}
        actor_spec = GeneratorSpec(encode=enc, fps=preset.fps, sampling=SamplingSettings(steps=3))  # no guidance at all
        actor = GenerationActor(actor_spec, str(tmp_path / "none"))
        rec = actor.generate({"round": 1, "prompt_index": 0, "prompt": "a red circle moving left to right",
                              "seeds": [11, 12], "version": 0, "scene": None}, [None])
        unguided = torch.stack([actor.cache.get(s["latent_key"]) for s in rec["samples"]])
        torch.testing.assert_close(split[2:], unguided, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(split[:2], plain, atol=1e-5, rtol=1e-5)
        assert (split[:2] - split[2:]).abs().max() > 1e-2


def test_a_separate_round_trains_with_the_online_configs_dpo_section(tmp_path):
    """The round's Flow-DPO config is built from the sections the two configs share (model, Flow-DPO): every
    DPO knob of the online job reaches its training rounds, beta_schedule included."""
    from types import SimpleNamespace

    from videoalign_ray.pipelines.online_dpo import OnlineDPOConfig
    from videoalign_ray.pipelines.online_dpo_separate import FlowDPORoundTrainer

    cfg = OnlineDPOConfig(beta=250.0, beta_schedule="time_dependent", placement="separate", num_frames=6).effective()
    runner = SimpleNamespace(cfg=cfg, out=tmp_path, model_dir=tmp_path / "model", use_gpu=False,
                             job=SimpleNamespace(tracking_uri=f"sqlite:///{tmp_path}/m.db"))
    flow = FlowDPORoundTrainer(runner).config(2, None, None)
    assert (flow.beta, flow.beta_schedule, flow.num_frames, flow.seed) == (250.0, "time_dependent", 6, cfg.seed + 2)
    assert flow.model_path == str(tmp_path / "model") and flow.max_steps == cfg.steps_per_round


def test_served_rewards_are_scored_once_per_group_and_reused(tmp_path):
    """RewardSource (served): every sample scored through the handle in order, K taken per group from its own
    record (groups of different sizes), the scores kept beside the mp4s and reused by the next call."""
    from types import SimpleNamespace

    from videoalign_ray.online.rewards import RewardSource

    calls = []

    class Handle:  # the DeploymentHandle's surface served_rewards uses
        class score:  # noqa: N801
            @staticmethod
            def remote(prompt, path):
                calls.append(path)
                v = float(len(calls))
                return SimpleNamespace(result=lambda timeout_s: {"VQ": v, "MQ": -v, "TA": 2 * v})

    def rec(i, k):
        (tmp_path / "round-001").mkdir(exist_ok=True)
        return {"prompt_index": i, "prompt": f"p{i}",
                "samples": [{"path": str(tmp_path / "round-001" / f"p{i:04d}_s{j:02d}.mp4")} for j in range(k)]}

    src = RewardSource(kind="served", samples_dir=tmp_path, endpoint="app", handle=Handle())
    records = [rec(0, 2), rec(1, 3)]
    first = src.score(records)
    assert [len(g) for g in first] == [2, 3] and first[1][0] == [3.0, -3.0, 6.0] and len(calls) == 5
    assert (tmp_path / "round-001" / "p0001.reward.json").is_file()
    assert src.score(records) == first and len(calls) == 5  # reused, not asked again
    gt = RewardSource(kind="ground-truth", samples_dir=tmp_path)
    assert gt.score([{"samples": [{"ground_truth": {"VQ": 0.1, "MQ": 0.2, "TA": 0.3}}]}]) == [[[0.1, 0.2, 0.3]]]


def test_round_metrics_tolerate_a_worker_with_nothing_to_train():
    """A colocated worker whose prompts gave no pair reports no loss: the round's means use the workers that
    trained, the micro-batch count is their sum (it raised KeyError when only worker 0's keys were read)."""
    from videoalign_ray.online.colocated_rounds import _mean_metrics

    got = _mean_metrics([{"micro_batches": 0, "busy_s": 1.0},
                         {"loss": 0.5, "implicit_acc": 1.0, "micro_batches": 3, "busy_s": 2.0},
                         {"loss": 0.7, "implicit_acc": 0.0, "micro_batches": 1, "busy_s": 2.0}])
    assert got == {"loss": 0.6, "implicit_acc": 0.5, "micro_batches": 4.0}


def test_online_prompts_default_to_the_worlds_train_split_and_reject_unknown_ones(tmp_path):
    """load_online_prompts: without a file, the world's train prompts (classic 24, large 80) with their scenes;
    a file's prompt outside the world is rejected (row and reason) under the ground-truth reward, kept when served;
    nothing usable is an error."""
    from videoalign_ray.errors import DataError
    from videoalign_ray.online.prompts import load_online_prompts
    from videoalign_ray.synthetic.world import split_scenes

    def words(p):
        return len(p.split())

    for world, n in (("classic", 24), ("large", 80)):
        prompts, rejects, scenes = load_online_prompts(None, "prompt", count_tokens=words, max_tokens=16, world=world,
                                                       seed=0, ground_truth=True)
        assert prompts == [s.prompt for s in split_scenes(seed=0, world=world)[0]] and len(prompts) == n
        assert not rejects and all(scenes[p].world == world and scenes[p].prompt == p for p in prompts)
    f = tmp_path / "prompts.txt"
    f.write_text("a purple circle moving top left to bottom right\na cat surfing a wave\n")
    kept, rejects, scenes = load_online_prompts(f, "prompt", count_tokens=words, max_tokens=16, world="large", seed=0,
                                                ground_truth=True)
    assert kept == ["a purple circle moving top left to bottom right"] and list(scenes) == kept
    assert [(r.row, r.reason) for r in rejects] == [(2, "not a synthetic-world prompt: no ground-truth reward")]
    with pytest.raises(DataError, match="no usable prompt"):  # the classic world has no purple
        load_online_prompts(f, "prompt", count_tokens=words, max_tokens=16, world="classic", seed=0, ground_truth=True)
    kept, rejects, scenes = load_online_prompts(f, "prompt", count_tokens=words, max_tokens=16, world="classic",
                                                seed=0, ground_truth=False)
    assert len(kept) == 2 and not rejects and not scenes


def test_online_configs_take_the_world_and_reject_prompts_per_round_when_separate():
    from videoalign_ray.pipelines.online_dpo import OnlineDPOConfig
    from videoalign_ray.pipelines.online_grpo import OnlineGRPOConfig

    assert OnlineGRPOConfig(world="large", prompts="p.txt", preset="wan2.1-1.3b").world == "large"
    assert OnlineDPOConfig(world="large", prompts_per_round=8).prompts_per_round == 8
    with pytest.raises(ValueError, match="prompts-per-round is a colocated option"):
        OnlineDPOConfig(prompts_per_round=8, placement="separate")
    with pytest.raises(ValueError, match="world"):
        OnlineGRPOConfig(world="huge")
