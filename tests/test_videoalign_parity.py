"""Released VideoReward checkpoints score exactly as VideoAlign's inference scores them: every released layout
against the independent transcription of VideoAlign's inference in tests/videoalign_release.py (its docstring
cites the files and lines), on the real example videos, within 1e-4 in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from videoalign_release import (
    TEMPLATE_SHA256,
    build_world,
    project_scores,
    reference_scores,
    va_smart_nframes,
    write_release,
)

pytestmark = [pytest.mark.shared_data]


@pytest.fixture(scope="module")
def world(tmp_path_factory, shared_data):
    return build_world(tmp_path_factory.mktemp("videoalign"), shared_data)


def test_the_templates_are_videoaligns_byte_for_byte():
    import hashlib

    from videoalign_ray.reward import videoalign_templates as t

    for name, digest in TEMPLATE_SHA256.items():
        assert hashlib.sha256(getattr(t, name).encode()).hexdigest() == digest, name
    assert t.build_prompt("a cat", ["VQ", "MQ", "TA"], "detailed_special").count("<|") == 3
    assert t.build_prompt("a cat", "TA", "none") == "a cat"


@pytest.mark.parametrize("layout,data_config,rslora", [
    ("peft", {}, False),
    ("adapter", {}, True),
    ("full", {"num_frames": 8, "fps": None}, False),
], ids=["peft-model.pth", "adapter+non_lora-rslora", "full-model.pth-8-frames"])
def test_every_released_layout_scores_as_videoalign_inference(world, layout, data_config, rslora):
    folder, weights, conf = write_release(world, f"release-{layout}", layout, data_config, rslora=rslora)
    expected = reference_scores(world, weights, conf)
    got = project_scores(folder, world["paths"], world["prompts"])
    assert np.abs(expected).max() > 0.05  # not a degenerate model
    assert np.abs(got - expected).max() < 1e-4, (got - expected)
    if layout == "peft":  # each step the issue measured changes the scores: the test can tell them apart
        for change in ({"positions": "mrope"}, {"template": "project"}):
            off = project_scores(folder, world["paths"], world["prompts"], **change)
            assert np.abs(off - expected).max() > 1e-3, change


def test_the_checkpoint_is_chosen_as_videoalign_chooses_it(tmp_path, caplog):
    from videoalign_ray.errors import ModelPathError
    from videoalign_ray.reward.videoalign_checkpoint import choose_checkpoint

    for n in (2, 10, 9):
        (tmp_path / f"checkpoint-{n}").mkdir()
    assert choose_checkpoint(tmp_path).name == "checkpoint-10"  # numeric, not lexical
    assert choose_checkpoint(tmp_path, 9).name == "checkpoint-9"
    assert choose_checkpoint(tmp_path, 7).name == "checkpoint-10" and "no checkpoint-7" in caplog.text
    with pytest.raises(ModelPathError, match="no checkpoint-N"):
        choose_checkpoint(tmp_path / "checkpoint-2")


def test_frame_counts_follow_smart_nframes():
    """The issue's cases and a sweep, against the transcription of ``smart_nframes`` + ``linspace().round()``."""
    from videoalign_ray.data.sampling import sample_indices, videoalign_indices

    assert len(videoalign_indices(3, 24.0, fps=2.0)) == 2 and len(sample_indices(3, 24.0)) == 4
    assert len(videoalign_indices(7, 1.0, fps=2.0)) == 6 and len(sample_indices(7, 1.0)) == 14
    for total in (2, 3, 5, 7, 16, 49, 81, 126, 152, 1000, 2000):
        for fps in (1.0, 8.0, 16.0, 24.0, 29.97, 30.0):
            for ele in ({"fps": 2.0}, {"fps": 1.0}, {"nframes": 8}, {"nframes": 9}):
                try:
                    n = va_smart_nframes(ele, total, fps)
                except ValueError:
                    with pytest.raises(ValueError):
                        videoalign_indices(total, fps, fps=ele.get("fps"), num_frames=ele.get("nframes"))
                    continue
                want = torch.linspace(0, total - 1, n).round().long().numpy()
                got = videoalign_indices(total, fps, fps=ele.get("fps"), num_frames=ele.get("nframes"))
                assert np.array_equal(got, want), (total, fps, ele)
                assert len(np.unique(got)) == len(got)  # never a repeated frame
