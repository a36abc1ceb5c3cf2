"""Memory model of one VideoReward training micro-step on Qwen2-VL-2B: GiB per GPU for a clip size and pairs.

The step is the project's own: :class:`~videoalign_ray.reward.model.VideoRewardModel` with the paper's recipe
(vision tower and merger trained, LoRA on every linear layer of the LM, only the new token rows of the input
embedding trained, the reward head), both videos of each pair through the model, the BTT loss and
``backward()``. Qwen2-VL's rope index and vision attention read token values, so the step cannot run under
``FakeTensorMode`` as the Wan model does; it runs for real on CPU in bf16 with random weights, at the real
widths but 1-2 vision blocks and 1-2 LM layers and small clips, while
:class:`~videoalign_ray.flow.memory.LiveTensorBytes` counts the peak of live tensors. Each extra block and
layer adds its stored activations, which grow linearly with tokens (attention runs PyTorch's fused SDPA
kernels, O(tokens) like flash attention on a GPU), so

    peak(vision blocks V, LM layers L, tokens) = base(tokens) + V * per_block(tokens) + L * per_layer(tokens)

fitted from six small runs and evaluated at 32 blocks, 28 layers and the clip's tokens. Weights and optimizer
states are added analytically as in :mod:`videoalign_ray.flow.memory` (bf16 weights, fp32 master + Adam with
ZeRO). Not counted: CUDA context, NCCL buffers, fragmentation (the 15% headroom).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from videoalign_ray.flow.memory import GIB, LiveTensorBytes, StepMemory, fit_line

# Qwen2-VL-2B-Instruct's published config (the LM of Qwen2-1.5B, the 675M ViT).
QWEN2_VL_2B_TEXT = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                        num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                        rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
QWEN2_VL_2B_VISION = dict(depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16, in_channels=3, hidden_size=1536,
                          patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
TOKEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                 vision_end_token_id=151653)
REWARD_TOKEN_IDS = [151646, 151647, 151648]  # three ids inside the vocabulary stand in for the added tokens
PATCH_BYTES = 3 * 2 * 14 * 14  # values per patch: RGB x temporal patch 2 x 14 x 14


def video_grid(num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Qwen2-VL's (t, h, w) patch grid of a clip: frames over the temporal patch 2, pixels over 14 (the
    processor resizes to multiples of 28 first). Raises ValueError for a size that is not a multiple of 28."""
    if height % 28 or width % 28:
        raise ValueError(f"{height}x{width}: Qwen2-VL's processor resizes to multiples of 28 pixels")
    return math.ceil(num_frames / 2), height // 14, width // 14


def llm_tokens(grid: tuple[int, int, int], text_tokens: int) -> int:
    """LM tokens of one video + prompt: the merged video tokens (t*h*w / 4), vision start/end, the prompt
    and template (``text_tokens``) and the three reward tokens."""
    t, h, w = grid
    return t * h * w // 4 + 2 + text_tokens + 3


def _config(text_layers: int, vision_depth: int):
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(text_config={**QWEN2_VL_2B_TEXT, "num_hidden_layers": text_layers},
                         vision_config={**QWEN2_VL_2B_VISION, "depth": vision_depth}, **TOKEN_IDS)


def _build(text_layers: int, vision_depth: int, lora_rank: int, meta: bool = False):
    """VideoReward on Qwen2-VL (bf16, random weights; the two vocabulary-sized matrices zero) with the paper's
    training recipe applied."""
    from transformers import Qwen2VLForConditionalGeneration

    from videoalign_ray.reward.model import VideoRewardModel, apply_lora_recipe

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta") if meta else torch.device("cpu"):
            torch.manual_seed(0)
            cfg = _config(text_layers, vision_depth)
            cfg._attn_implementation = "sdpa"
            with _no_init_weights():
                backbone = Qwen2VLForConditionalGeneration(cfg)
            if not meta:
                _fill_random(backbone)
            model = VideoRewardModel(backbone, REWARD_TOKEN_IDS, output_dim=1)
            apply_lora_recipe(model, REWARD_TOKEN_IDS, lora_rank, 2.0 * lora_rank)
    finally:
        torch.set_default_dtype(previous)
    return model


def _no_init_weights():
    """transformers' switch that skips ``_init_weights`` in a model's constructor (buffers are still computed)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


@torch.no_grad()
def _fill_random(model: torch.nn.Module, big: int = 1 << 24) -> None:
    """N(0, 0.02) weights from a fixed seed, and zero for tensors of ``big`` elements or more (the embedding and
    LM head, 2 x 233 M values at Qwen2-VL-2B's width: transformers' bf16 ``normal_`` on them took ~7 s of every
    build). The bytes a step keeps live do not depend on the values."""
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        if p.numel() >= big:
            p.zero_()
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def _inputs(grid: tuple[int, int, int], text_tokens: int, videos: int) -> dict:
    t, h, w = grid
    n_video = t * h * w // 4
    row = ([1000] * text_tokens + [TOKEN_IDS["vision_start_token_id"]] + [TOKEN_IDS["video_token_id"]] * n_video
           + [TOKEN_IDS["vision_end_token_id"]] + REWARD_TOKEN_IDS)
    types = [0] * (text_tokens + 1) + [2] * n_video + [0] * 4
    return {"input_ids": torch.tensor([row] * videos), "attention_mask": torch.ones(videos, len(row), dtype=torch.long),
            "pixel_values_videos": torch.randn(videos * t * h * w, PATCH_BYTES, dtype=torch.bfloat16),
            "video_grid_thw": torch.tensor([[t, h, w]] * videos), "mm_token_type_ids": torch.tensor([types] * videos)}


def measured_peak(text_layers: int, vision_depth: int, grid: tuple[int, int, int], *, text_tokens: int = 64,
                  pairs: int = 1, lora_rank: int = 64, gradient_checkpointing: bool = True) -> int:
    """Peak bytes of live tensors created by one real CPU micro-step (``pairs`` pairs: 2 * pairs videos through
    the model, BTT loss, backward) on Qwen2-VL-2B's widths with ``vision_depth`` blocks and ``text_layers``."""
    from videoalign_ray.reward.losses import btt_loss

    model = _build(text_layers, vision_depth, lora_rank)
    if gradient_checkpointing:
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    inputs = _inputs(grid, text_tokens, 2 * pairs)
    # The input embedding's gradient is dense (vocab x hidden, 445 MiB in bf16) even though its row mask keeps
    # three rows: at the end of backward it and its masked copy (890 MiB) are live at once, after the
    # activations are freed. It would hide the activations at these small sizes, so it is left out here and
    # reward_step_memory takes the larger of the two.
    model.backbone.get_input_embeddings().weight.requires_grad_(False)
    # gradients exist before the step (DeepSpeed's buffers; counted with the trainable weights), so the count
    # holds what the step itself adds: activations and the transient gradients accumulated into them
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.grad = torch.zeros_like(p)
    tracker = LiveTensorBytes()
    tracker.ignore([*model.parameters(), *model.buffers(), *inputs.values(), *(p.grad for p in trainable)])
    with tracker:
        rewards = model(**inputs)  # (2 * pairs, 3): the A videos, then the B videos
        loss = btt_loss(rewards[:pairs], rewards[pairs:], torch.ones(pairs, 3))
        loss.backward()
    return tracker.peak


@dataclass(frozen=True)
class LayerFit:
    """``bytes = a + b * tokens`` for the base, one vision block (tokens: patches) and one LM layer (LM tokens)."""

    base: tuple[float, float]
    per_block: tuple[float, float]
    per_layer: tuple[float, float]

    def activations(self, patches: int, tokens: int, blocks: int, layers: int) -> float:
        """Bytes of activations for a model of ``blocks`` vision blocks and ``layers`` LM layers."""
        return (self.base[0] + self.base[1] * tokens + blocks * (self.per_block[0] + self.per_block[1] * patches)
                + layers * (self.per_layer[0] + self.per_layer[1] * tokens))


def fit_layers(grids: list[tuple[int, int, int]], *, text_tokens: int = 64, pairs: int = 1, lora_rank: int = 64,
               gradient_checkpointing: bool = True) -> tuple[LayerFit, list[dict]]:
    """Measure (1 block, 1 layer), (2, 1) and (1, 2) at each grid and fit :class:`LayerFit`; also returns the
    measured points."""
    points, base, block, layer = [], [], [], []
    for grid in grids:
        kw = dict(text_tokens=text_tokens, pairs=pairs, lora_rank=lora_rank, gradient_checkpointing=gradient_checkpointing)
        p11, p21, p12 = (measured_peak(layers, depth, grid, **kw) for depth, layers in ((1, 1), (2, 1), (1, 2)))
        patches, tokens = math.prod(grid), llm_tokens(grid, text_tokens)
        points.append({"grid": grid, "patches": patches, "tokens": tokens, "peak_1_1": p11, "peak_2_1": p21,
                       "peak_1_2": p12})
        block.append((patches, p21 - p11))
        layer.append((tokens, p12 - p11))
        base.append((tokens, p11 - (p21 - p11) - (p12 - p11)))
    fit = LayerFit(*(fit_line([x for x, _ in s], [y for _, y in s]) for s in (base, block, layer)))
    return fit, points


def reward_step_memory(fit: LayerFit, *, num_frames: int, height: int, width: int, text_tokens: int = 64,
                       lora_rank: int = 64, zero_stage: int = 2, world_size: int = 8) -> StepMemory:
    """GiB of one VideoReward micro-step on Qwen2-VL-2B for a clip of ``num_frames`` x ``height`` x ``width``
    (after the processor's resize) with ``fit`` (from :func:`fit_layers` at the same pairs and checkpointing).
    Raises ValueError for a size that is not a multiple of 28."""
    grid = video_grid(num_frames, height, width)
    model = _build(QWEN2_VL_2B_TEXT["num_hidden_layers"], QWEN2_VL_2B_VISION["depth"], lora_rank, meta=True)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer_div = world_size if zero_stage >= 1 else 1
    grad_div = world_size if zero_stage >= 2 else 1
    acts = fit.activations(math.prod(grid), llm_tokens(grid, text_tokens), QWEN2_VL_2B_VISION["depth"],
                           QWEN2_VL_2B_TEXT["num_hidden_layers"])
    embedding_grad = 2 * 2 * QWEN2_VL_2B_TEXT["vocab_size"] * QWEN2_VL_2B_TEXT["hidden_size"]  # grad + masked copy
    acts = max(acts, embedding_grad)
    return StepMemory(weights=(params - trainable) * 2 / GIB,
                      trainable=trainable * (2 + 2 / grad_div + 12 / optimizer_div) / GIB,
                      activations=acts / GIB, params=params, trainable_params=trainable,
                      tokens_per_video=llm_tokens(grid, text_tokens))
