"""A shortened run of the exact pre-training command still works and exports a loadable base;
the committed tiny-world asset loads and is not the random init."""

import json

import pytest
import torch

from videoalign_ray.flow.model import (
    TINY_WORLD_ASSET,
    TINY_WORLD_ASSETS,
    load_transformer,
    materialize_tiny_base,
)

pytestmark = pytest.mark.integration


def test_shortened_pretraining_exports_a_base(tmp_path):
    import ray

    from videoalign_ray.config import validate_config
    from videoalign_ray.experiments.pretrain_base import PretrainConfig, run_pretrain
    from videoalign_ray.flow.generator import load_policy

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        s = run_pretrain(validate_config(PretrainConfig, dict(
            output_dir=str(tmp_path / "pt"), max_steps=3, world_pairs=12, checkpoint_every=3, num_samples=0,
            batch_size=2, warmup_steps=1, num_workers=1)))
    finally:
        ray.shutdown()
    export = tmp_path / "pt" / "tiny_world_base"
    assert s["export_dir"] == str(export) and s["steps"] == 3
    info = json.loads((export / "model_index.json").read_text())
    assert info["preset"] == "tiny-world" and info["command"].startswith("python jobs/pretrain_base.py")
    trained = load_transformer(export)
    random_init = load_transformer(tmp_path / "pt" / "base_model")
    diff = max((a - b).abs().max().item() for a, b in zip(trained.parameters(), random_init.parameters(), strict=True))
    assert diff > 0, "export holds the random init"
    same = load_policy(tmp_path / "pt" / "base_model", tmp_path / "pt" / "final")
    for a, b in zip(trained.parameters(), same.parameters(), strict=True):
        assert torch.equal(a, b)


def test_committed_asset_is_trained(tmp_path):
    if not (TINY_WORLD_ASSET / "transformer").is_dir():
        pytest.skip("tiny-world asset not built")
    info = json.loads((TINY_WORLD_ASSET / "model_index.json").read_text())
    assert info["steps"] >= 1000 and "command" in info
    base = load_transformer(materialize_tiny_base(tmp_path / "rand", seed=0))
    asset = load_transformer(TINY_WORLD_ASSET)
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(asset.parameters(), base.parameters(), strict=True))


def test_large_world_base_learned_the_large_grammar(tmp_path):
    """The committed large-world base was pre-trained on the large grammar: on the large world's held-out
    prompts whose colour the classic world lacks, its samples match the prompt (TA) better than the classic
    base's, which never saw those words (measured: 0.60 vs 0.52 on these 8 prompts x 2 samples)."""
    import numpy as np

    from videoalign_ray.flow.model import PRESETS
    from videoalign_ray.synthetic.evaluate import Generator, score_generators
    from videoalign_ray.synthetic.world import EXTRA_COLORS, split_scenes

    large = TINY_WORLD_ASSETS["large"]
    info = json.loads((large / "model_index.json").read_text())
    assert info["world"] == "large" and info["steps"] >= 1000
    held = [s for s in split_scenes(seed=0, world="large")[1] if s.color in EXTRA_COLORS][:8]
    p = PRESETS["tiny-world"]
    kw = dict(samples_per_prompt=2, seed=5, num_frames=p.num_frames, height=p.height, width=p.width,
              max_text_tokens=p.max_text_tokens, steps=8)
    ta = {name: np.mean([r["TA"] for r in score_generators({name: Generator(str(path))}, held, **kw)[0][name]])
          for name, path in (("large", large), ("classic", TINY_WORLD_ASSET))}
    assert ta["large"] > ta["classic"] + 0.05, ta
