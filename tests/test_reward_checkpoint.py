"""Our VideoReward checkpoint round trip, the scoring scheme it records, and the refusal of pickled payloads in
released folders (the released layouts themselves: tests/test_videoalign_parity.py)."""

import json

import numpy as np
import pytest
import torch

from videoalign_ray.reward.checkpoint import load_reward_checkpoint, save_reward_checkpoint
from videoalign_ray.reward.model import VideoRewardModel, tiny_qwen2vl_config
from videoalign_ray.reward.processor import VideoRewardProcessor, build_tiny_tokenizer


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


def test_pickle_payloads_are_refused(tmp_path):
    """A released folder's .pth files load with weights_only=True: a pickled object is refused, not run."""
    from videoalign_ray.reward.videoalign_checkpoint import load_videoalign_checkpoint

    folder = tmp_path / "evil"
    (folder / "checkpoint-1").mkdir(parents=True)
    (folder / "model_config.json").write_text(json.dumps({"model_config": {"model_name_or_path": str(tmp_path)}}))
    torch.save({"x": object()}, folder / "checkpoint-1" / "model.pth")  # needs arbitrary unpickling
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_videoalign_checkpoint(folder, base=str(_tiny_base(tmp_path)))


def _tiny_base(tmp_path):
    from transformers import Qwen2VLForConditionalGeneration

    tok = build_tiny_tokenizer(["a red circle"], 300)
    base = tmp_path / "base"
    Qwen2VLForConditionalGeneration(tiny_qwen2vl_config(tok)).save_pretrained(base)
    tok.save_pretrained(base)
    return base


def test_a_checkpoint_records_its_scheme_and_older_ones_read_as_the_project_scheme(tok, tmp_path):
    from videoalign_ray.reward.checkpoint import scheme_of
    from videoalign_ray.reward.scheme import ScoringScheme

    m = _model(tok, seed=6)
    scheme = ScoringScheme(fps=8.0, min_pixels=56 * 56, max_pixels=56 * 56)
    save_reward_checkpoint(m, tok, tmp_path / "ck", scheme=scheme)
    _, proc = load_reward_checkpoint(tmp_path / "ck")
    assert proc.scheme == scheme
    old = {"output_dim": 1, "fps": 8.0, "min_pixels": 3136, "max_pixels": 3136}  # written before schemes
    assert scheme_of(old) == ScoringScheme(fps=8.0, min_pixels=3136, max_pixels=3136, template="project",
                                           positions="mrope")
    with pytest.raises(ValueError, match="unknown scoring-scheme keys"):
        ScoringScheme.from_dict({"template": "project", "colour": "red"})
    with pytest.raises(ValueError, match="exactly one"):
        ScoringScheme(fps=2.0, num_frames=8)


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


def test_released_checkpoints_score_in_float32_on_cpu(tok):
    """VideoAlign runs the released model in bf16; on a CPU the scorer keeps float32 (bf16 only on a GPU that has
    it), whatever the scheme asks for."""
    from videoalign_ray.reward.checkpoint import place_for_scoring
    from videoalign_ray.reward.scheme import ScoringScheme

    released = ScoringScheme(template="detailed_special", positions="1d", frame_rule="videoalign", resize="float",
                             dtype="bfloat16")
    model = place_for_scoring(_model(tok, seed=7), released, "cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
