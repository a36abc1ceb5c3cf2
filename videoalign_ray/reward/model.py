"""VideoReward: a Qwen2-VL backbone with a linear reward head read at three special tokens (paper section 3).

``reward_token="special"``: reward for dimension d = head applied to the last-layer hidden state at the
``<|{d}_reward|>`` token; ``output_dim=1`` shares one head row for the three tokens (the paper's checkpoint),
``output_dim=3`` takes row d at token d. ``reward_token="last"``: the last non-pad token through a 3-output
head. Outputs are raw rewards ``(B, 3)`` float32; :meth:`normalize` applies the stored per-dimension
mean/std measured on validation data, and ``Overall = VQ + MQ + TA`` of the normalised scores.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from videoalign_ray.reward.processor import REWARD_TOKENS


def tiny_qwen2vl_config(tokenizer, hidden: int = 128, layers: int = 4, vision_dim: int = 64,
                        vision_depth: int = 2) -> object:
    """A random-init Qwen2-VL config small enough for CPU (defaults: ~0.97 M parameters; 4 LM layers rather
    than 2 raised held-out TA accuracy from 0.885 to 0.920 in the default reward run, see the README)."""
    from transformers import Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|video_pad|>", "<|image_pad|>", "<|vision_start|>",
                                                          "<|vision_end|>", "<|endoftext|>", "<|im_end|>")}
    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            rope_scaling={"type": "mrope", "mrope_section": _mrope_section(hidden // 4)},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(depth=vision_depth, embed_dim=vision_dim, hidden_size=hidden, num_heads=2, patch_size=14,
                           spatial_merge_size=2,
                           temporal_patch_size=2, in_channels=3),
        video_token_id=ids["<|video_pad|>"], image_token_id=ids["<|image_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )


def _mrope_section(head_dim: int) -> list[int]:
    """Qwen2-VL's (temporal, height, width) split of the rotary half-dimension: 1/4, 3/8, 3/8."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


class VideoRewardModel(nn.Module):
    """Qwen2-VL + reward head.

    Args:
        backbone: a ``Qwen2VLForConditionalGeneration`` (its ``.model`` gives hidden states).
        reward_token_ids: token ids of ``<|VQ_reward|>``, ``<|MQ_reward|>``, ``<|TA_reward|>``.
        output_dim: 1 (shared row) or 3 (row d at token d); ignored for ``reward_token="last"`` (always 3).
        positions: ``"mrope"`` (transformers' 3-D multimodal positions) or ``"1d"`` (``0..L-1`` on the three
            rotary axes, VideoAlign's positions: :mod:`videoalign_ray.reward.scheme`).
    """

    def __init__(self, backbone, reward_token_ids: list[int], output_dim: int = 1,
                 reward_token: Literal["special", "last"] = "special", positions: Literal["mrope", "1d"] = "mrope"):
        super().__init__()
        if output_dim not in (1, 3):
            raise ValueError(f"output_dim must be 1 or 3, got {output_dim}")
        self.backbone = backbone
        self.reward_token = reward_token
        self.positions = positions
        self.output_dim = 3 if reward_token == "last" else output_dim
        hidden = backbone.config.text_config.hidden_size
        self.rm_head = nn.Linear(hidden, self.output_dim, bias=False)
        self.register_buffer("reward_token_ids", torch.tensor(reward_token_ids, dtype=torch.long))
        self.register_buffer("norm_mean", torch.zeros(3))
        self.register_buffer("norm_std", torch.ones(3))

    def forward(self, input_ids, attention_mask, pixel_values_videos, video_grid_thw, mm_token_type_ids):
        """Raw rewards ``(B, 3)`` float32 for VQ, MQ, TA.

        Raises:
            ValueError: a row lacks one of the reward tokens (``reward_token="special"``).
        """
        position_ids = None
        if self.positions == "1d":  # VideoAlign: position_ids=None under transformers 4.45 -> arange on 3 axes
            b, length = input_ids.shape
            position_ids = torch.arange(length, device=input_ids.device).view(1, 1, -1).expand(3, b, -1)
        out = self.backbone.model(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw, mm_token_type_ids=mm_token_type_ids, position_ids=position_ids,
        )
        hidden = out.last_hidden_state  # (B, L, H)
        b = hidden.shape[0]
        if self.reward_token == "last":
            last = attention_mask.long().sum(dim=1) - 1
            return self.rm_head(hidden[torch.arange(b), last]).float()
        pos = []
        for tid in self.reward_token_ids:
            match = (input_ids == tid).long()
            if not bool(match.any(dim=1).all()):
                raise ValueError("a prompt is missing a reward token; build inputs with VideoRewardProcessor")
            pos.append(match.argmax(dim=1))
        h = torch.stack([hidden[torch.arange(b), p] for p in pos], dim=1)  # (B, 3, H)
        scores = self.rm_head(h)  # (B, 3, output_dim)
        if self.output_dim == 1:
            return scores[..., 0].float()
        return torch.diagonal(scores, dim1=1, dim2=2).float()

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """``(raw - mean) / std`` per dimension with the stored validation statistics."""
        return (raw - self.norm_mean) / self.norm_std

    @staticmethod
    def overall(normalized: torch.Tensor) -> torch.Tensor:
        """``VQ + MQ + TA`` of normalised rewards ``(B, 3)`` -> ``(B,)``."""
        return normalized.sum(dim=-1)


def apply_lora_recipe(model: VideoRewardModel, new_token_ids: list[int], lora_rank: int, lora_alpha: float) -> None:
    """The paper's recipe with LoRA: :func:`freeze_for_training`, then LoRA (rank ``lora_rank``) on every
    linear layer of the LM (q/k/v/o, gate/up/down). peft marks everything in the LM but its adapters frozen,
    the input embedding included, so its new token rows are made trainable again afterwards (they stayed
    random before this was fixed)."""
    from peft import LoraConfig, inject_adapter_in_model

    freeze_for_training(model, new_token_ids)
    inject_adapter_in_model(
        LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=0.0,
                   target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
        model.backbone.model.language_model,
    )
    model.backbone.get_input_embeddings().weight.requires_grad_(True)  # the row mask of freeze_for_training stays


def freeze_for_training(model: VideoRewardModel, new_token_ids: list[int]) -> None:
    """Paper recipe: vision tower + merger trainable, only the new token rows of the input embedding trained
    (a gradient mask), rest of the embedding frozen; the LM itself is trained through LoRA
    (:func:`apply_lora_recipe`) or frozen; the reward head is trained."""
    bb = model.backbone
    bb.requires_grad_(False)
    bb.model.visual.requires_grad_(True)
    emb = bb.get_input_embeddings()
    emb.weight.requires_grad_(True)
    mask = torch.zeros_like(emb.weight[:, :1])
    mask[new_token_ids] = 1.0
    emb.weight.register_hook(lambda g: g * mask.to(g.device, g.dtype))
    model.rm_head.requires_grad_(True)


__all__ = ["REWARD_TOKENS", "VideoRewardModel", "apply_lora_recipe", "freeze_for_training", "tiny_qwen2vl_config"]
