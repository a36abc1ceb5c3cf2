"""The VideoReward memory model: clip arithmetic, the recipe's trainable parameters against a hand count, and
the real CPU count growing with LM layers (Qwen2-VL-2B widths, random weights)."""

import pytest

from videoalign_ray.reward.memory import (
    QWEN2_VL_2B_TEXT,
    LayerFit,
    llm_tokens,
    measured_peak,
    reward_step_memory,
    video_grid,
)


def test_clip_arithmetic():
    assert video_grid(16, 448, 448) == (8, 32, 32)  # 8 s at 2 fps, the 448x448 budget
    assert video_grid(15, 448, 448)[0] == 8  # an odd frame count: the last frame repeats
    assert llm_tokens((8, 32, 32), 64) == 8 * 32 * 32 // 4 + 2 + 64 + 3
    with pytest.raises(ValueError, match="multiples of 28"):
        video_grid(16, 440, 448)


def test_trainable_parameters_match_a_hand_count_and_the_embedding_gradient_is_a_floor():
    fit = LayerFit(base=(0.0, 0.0), per_block=(0.0, 0.0), per_layer=(0.0, 0.0))
    m = reward_step_memory(fit, num_frames=16, height=448, width=448, lora_rank=64, world_size=8)
    h, ffn, kv, layers, r = 1536, 8960, 256, 28, 64
    lora = layers * r * ((h + h) * 2 + (h + kv) * 2 + (h + ffn) * 2 + (ffn + h))  # q,o; k,v; gate,up; down
    embedding = QWEN2_VL_2B_TEXT["vocab_size"] * h
    vision = m.trainable_params - lora - embedding - 1 * h  # the rest: the vision tower and merger (+ head)
    assert 600e6 < vision < 700e6  # Qwen2-VL's ViT: ~675 M with its merger
    assert m.activations * 2**30 == pytest.approx(4 * embedding)  # zero fit: the dense embedding grad + its masked copy


@pytest.mark.integration
def test_activations_grow_with_layers_and_tokens():
    """Without checkpointing every layer keeps its activations until backward reaches it."""
    small, large = (1, 16, 16), (2, 16, 16)
    kw = dict(lora_rank=8, gradient_checkpointing=False)
    one = measured_peak(1, 1, small, **kw)
    assert measured_peak(1, 2, small, **kw) > one  # a second vision block
    assert measured_peak(1, 1, large, **kw) > one  # twice the patches
