"""The published VideoAlign checkpoint layout (full and LoRA variants) and our own checkpoint round trip."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from videoalign_ray.reward.checkpoint import (
    load_official_checkpoint,
    load_reward_checkpoint,
    map_official_key,
    save_reward_checkpoint,
)
from videoalign_ray.reward.model import VideoRewardModel, tiny_qwen2vl_config
from videoalign_ray.reward.processor import VideoRewardProcessor, build_tiny_tokenizer


def _official_name(our_key: str) -> str:
    """Our key -> the transformers-4.x name VideoAlign saved (the inverse of map_official_key)."""
    if our_key.startswith("backbone.model.visual."):
        return "visual." + our_key[len("backbone.model.visual."):]
    if our_key.startswith("backbone.model.language_model."):
        return "model." + our_key[len("backbone.model.language_model."):]
    if our_key.startswith("backbone.lm_head."):
        return "lm_head." + our_key[len("backbone.lm_head."):]
    return our_key


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer(["a red circle moving left to right"], 300)


def _model(tok, seed):
    from transformers import Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    return VideoRewardModel(Qwen2VLForConditionalGeneration(tiny_qwen2vl_config(tok)),
                            VideoRewardProcessor(tok).reward_token_ids, output_dim=1)


def _inputs(tok):
    vids = [np.random.default_rng(i).integers(0, 256, (4, 56, 56, 3), dtype=np.uint8) for i in range(2)]
    return VideoRewardProcessor(tok)(vids, ["a red circle", "a circle moving left"])


def _config(folder, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_config.json").write_text(json.dumps({
        "model_config": {"output_dim": 1, "use_special_tokens": True},
        "peft_lora_config": {"lora_r": 4, "lora_alpha": 8},
        "inference_config": {"VQ_mean": 0.5, "VQ_std": 2.0, "MQ_mean": -1.0, "MQ_std": 1.0, "TA_mean": 0.0,
                             "TA_std": 4.0},
        **extra,
    }))


def test_key_mapping():
    assert map_official_key("visual.blocks.0.attn.qkv.weight") == "backbone.model.visual.blocks.0.attn.qkv.weight"
    assert map_official_key("model.layers.1.mlp.up_proj.weight") == "backbone.model.language_model.layers.1.mlp.up_proj.weight"
    assert map_official_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight") == \
        "backbone.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
    assert map_official_key("rm_head.weight") == "rm_head.weight"


def test_full_model_pth(tok, tmp_path):
    trained = _model(tok, seed=1)
    folder = tmp_path / "videoreward"
    _config(folder)
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-12").mkdir()
    sd = {_official_name(k): v for k, v in trained.state_dict().items() if not k.startswith("norm_")
          and k != "reward_token_ids"}
    torch.save(sd, folder / "checkpoint-12" / "model.pth")
    fresh = _model(tok, seed=2)
    info = load_official_checkpoint(fresh, folder)
    assert info == {"step": 12, "format": "model.pth", "normalization": True}
    inp = _inputs(tok)
    with torch.no_grad():
        assert torch.allclose(fresh(**inp), trained(**inp), atol=1e-6)
    assert fresh.norm_std.tolist() == [2.0, 1.0, 4.0]
    with pytest.raises(FileNotFoundError, match="checkpoint-7"):
        load_official_checkpoint(fresh, folder, step=7)


def test_lora_layout_is_merged(tok, tmp_path):
    base = _model(tok, seed=3)
    trained_nonlora = _model(tok, seed=4)
    folder = tmp_path / "videoreward"
    _config(folder)
    ck = folder / "checkpoint-3"
    ck.mkdir()
    non_lora = {_official_name(k): v for k, v in trained_nonlora.state_dict().items()
                if k.startswith("backbone.model.visual.") or k.startswith("rm_head.")}
    torch.save(non_lora, ck / "non_lora_state_dict.pth")
    g = torch.Generator().manual_seed(0)
    lora, expected = {}, {k: v.clone() for k, v in base.state_dict().items()}
    expected.update({k: v for k, v in trained_nonlora.state_dict().items()
                     if k.startswith("backbone.model.visual.") or k.startswith("rm_head.")})
    for layer in range(2):
        for proj in ("q_proj", "v_proj"):
            w_key = f"backbone.model.language_model.layers.{layer}.self_attn.{proj}.weight"
            out_f, in_f = expected[w_key].shape
            a, b = torch.randn(4, in_f, generator=g), torch.randn(out_f, 4, generator=g)
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            lora[f"{prefix}.lora_A.weight"], lora[f"{prefix}.lora_B.weight"] = a, b
            expected[w_key] = expected[w_key] + 2.0 * b @ a  # alpha / r = 8 / 4
    save_file(lora, str(ck / "adapter_model.safetensors"))
    info = load_official_checkpoint(base, folder)
    assert info["format"] == "lora (4 merged)"
    got = base.state_dict()
    for k, v in expected.items():
        if not k.startswith("norm_"):
            assert torch.allclose(got[k], v, atol=1e-5), k


def test_pickle_payloads_are_refused(tok, tmp_path):
    folder = tmp_path / "evil"
    _config(folder)
    (folder / "checkpoint-1").mkdir()
    torch.save({"x": object()}, folder / "checkpoint-1" / "model.pth")  # needs arbitrary unpickling
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_official_checkpoint(_model(tok, 0), folder)


def test_own_checkpoint_round_trip(tok, tmp_path):
    m = _model(tok, seed=5)
    with torch.no_grad():
        m.norm_mean.copy_(torch.tensor([0.1, 0.2, 0.3]))
    save_reward_checkpoint(m, tok, tmp_path / "ck")
    loaded, proc = load_reward_checkpoint(tmp_path / "ck")
    inp = _inputs(tok)
    with torch.no_grad():
        assert torch.allclose(loaded(**inp), m(**inp), atol=1e-6)
    assert loaded.norm_mean.tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert not list(tmp_path.glob(".ck-*"))
