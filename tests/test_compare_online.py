"""jobs/compare_online.py's wiring (the training jobs and the sampling replaced by recorders): every method of
every seed trains on the one train split and is judged on its disjoint held-out prompts."""

from types import SimpleNamespace

import pytest

from videoalign_ray.synthetic.world import split_scenes


@pytest.mark.parametrize("world", ["classic", "large"])
def test_every_method_trains_on_the_split_the_comparison_holds_out_from(tmp_path, monkeypatch, world):
    import videoalign_ray.pipelines.flow_dpo as flow_dpo
    import videoalign_ray.pipelines.online_dpo as online_dpo
    import videoalign_ray.pipelines.online_grpo as online_grpo
    import videoalign_ray.runtime.placement as placement
    import videoalign_ray.synthetic.evaluate as evaluate
    import videoalign_ray.synthetic.world as world_mod
    from videoalign_ray.experiments.compare_online import CompareOnlineConfig, _run

    seen: dict = {"online": [], "offline": [], "scored": []}

    def online(kind):
        def run(cfg):
            seen["online"].append((kind, cfg))
            return {"final_policy": f"{kind}-{cfg.seed}"}
        return run

    monkeypatch.setattr(online_grpo, "run_online_grpo", online("grpo"))
    monkeypatch.setattr(online_dpo, "run_online_dpo", online("dpo"))
    monkeypatch.setattr(flow_dpo, "run_flow_job", lambda cfg: seen["offline"].append(cfg) or {"checkpoint": "off"})
    monkeypatch.setattr(world_mod, "make_preference_dataset",
                        lambda out, **kw: seen.setdefault("data", []).append(kw) or tmp_path / "pairs.csv")

    def scored(gens, scenes, **kw):
        seen["scored"].append((sorted(gens), [s.prompt for s in scenes]))
        rows = [{"prompt": s.prompt, "seed": k, "VQ": 0.5, "MQ": 0.5, "TA": 0.5} for s in scenes for k in range(2)]
        return {name: rows for name in gens}

    monkeypatch.setattr(evaluate, "score_generators_remote", scored)
    monkeypatch.setattr(placement, "use_gpu_default", lambda use_gpu: False)
    cfg = CompareOnlineConfig(output_dir=str(tmp_path), world=world, seeds="0,1", prompts_per_round=10)
    job = SimpleNamespace(out=tmp_path, complete=lambda summary: summary)
    summary = _run(cfg, job)

    train, held = split_scenes(seed=0, world=world)
    train_prompts, held_prompts = [s.prompt for s in train], [s.prompt for s in held]
    assert len(seen["online"]) == 4 and len(seen["offline"]) == 2
    for _, c in seen["online"]:
        assert c.world == world and c.prompts_per_round == 10
        assert (tmp_path / "train_prompts.txt").read_text().splitlines() == train_prompts  # not split(seed=c.seed)
        assert c.prompts == str(tmp_path / "train_prompts.txt")
    assert all(kw["scenes"] == train for kw in seen["data"])
    assert [s for s in seen["scored"]] == [(["base", "grpo", "offline_dpo", "online_dpo"], held_prompts)] * 2
    assert not set(train_prompts) & set(held_prompts)
    assert "held-out prompts" in summary["resolution"] and f"| {len(held_prompts)} |" in summary["resolution"]
