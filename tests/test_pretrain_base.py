"""A shortened run of the exact pre-training command still works and exports a loadable base;
the committed tiny-world asset loads and is not the random init."""

import json

import pytest
import torch

from videoalign_ray.flow.model import TINY_WORLD_ASSET, load_transformer, materialize_tiny_base

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
