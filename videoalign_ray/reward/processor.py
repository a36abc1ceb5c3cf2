"""VideoReward inputs without the hub or torchvision: prompt template, tokenizer, video patchification.

The prompt places the three reward tokens so that VQ and MQ come before the caption and TA after it
(docs/algorithms.md section 4: under causal attention VQ and MQ never see the caption). Videos are patchified
exactly like transformers' ``Qwen2VLVideoProcessor`` (rescale 1/255, CLIP mean/std, temporal patch 2, patch 14,
merge 2), producing ``pixel_values_videos`` ``(sum of patches, 3*2*14*14)`` float32 and ``video_grid_thw``
``(n_videos, 3)`` int64; text inputs carry ``mm_token_type_ids`` (2 on video tokens), which recent
transformers needs for M-RoPE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from videoalign_ray.reward.scheme import ScoringScheme

REWARD_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|video_pad|>", "<|image_pad|>")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|>{video}<|vision_end|>"
    "Please evaluate the visual quality of this video. <|VQ_reward|>\n"
    "Please evaluate the motion quality of this video. <|MQ_reward|>\n"
    "The text prompt used to generate this video is: \"{caption}\". "
    "Please evaluate how well the video aligns with the text prompt. <|TA_reward|><|im_end|>\n"
)

QWEN2VL_CHAT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|>{video}<|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n"
)
"""Qwen2-VL's chat template rendered for one user message holding a video then a text, with the default system
prompt and the generation prompt (``apply_chat_template(..., add_generation_prompt=True)``), as VideoAlign's
``inference.py`` builds its inputs. tests/test_videoalign_parity.py renders Qwen2-VL's Jinja template to check it."""
CAPTION_SLOT = "\x00caption\x00"


def patchify(frames: np.ndarray, patch_size: int = 14, temporal_patch_size: int = 2,
             merge_size: int = 2) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """uint8 frames ``(T, H, W, 3)`` (H, W multiples of ``patch_size * merge_size``) -> patches + grid.

    Returns ``(patches (grid_t*grid_h*grid_w, 3*temporal_patch_size*patch_size**2) float32, (t, h, w))``;
    the last frame is repeated to fill the final temporal patch. Raises ValueError on a bad size.
    """
    t, h, w, c = frames.shape
    if h % (patch_size * merge_size) or w % (patch_size * merge_size):
        raise ValueError(f"frame size {h}x{w} is not a multiple of {patch_size * merge_size}")
    x = torch.from_numpy(np.array(frames, dtype=np.float32)).div_(255.0)  # a writable copy: frames may be read-only
    x = (x - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    x = x.permute(0, 3, 1, 2)  # (T, C, H, W)
    if pad := -t % temporal_patch_size:
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
        t += pad
    gt, gh, gw = t // temporal_patch_size, h // patch_size, w // patch_size
    x = x.view(gt, temporal_patch_size, c, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size,
               patch_size)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * temporal_patch_size * patch_size * patch_size), (gt, gh, gw)


def build_tiny_tokenizer(texts: list[str], vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained offline on ``texts`` with the Qwen chat/vision and reward tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[*QWEN_SPECIAL, *REWARD_TOKENS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = texts + [TEMPLATE.format(video="", caption="")]
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   additional_special_tokens=[*QWEN_SPECIAL[1:], *REWARD_TOKENS])


def load_tokenizer(path: str | Path):
    """A saved tokenizer (ours or Qwen2-VL's); the three reward tokens are added when missing."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    missing = [t for t in REWARD_TOKENS if t not in tok.get_vocab()]
    if missing:  # appended in this order, as VideoAlign's create_model_and_processor adds them
        tok.add_tokens(missing, special_tokens=True)
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>"
    return tok


@dataclass
class VideoRewardProcessor:
    """Turns (frames, caption) pairs into the model's inputs. ``frames`` are already sampled and resized.
    ``scheme`` picks the text around the caption (the project's template or VideoAlign's, see
    :mod:`videoalign_ray.reward.scheme`)."""

    tokenizer: object
    scheme: ScoringScheme = field(default_factory=ScoringScheme)
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2

    @property
    def reward_token_ids(self) -> list[int]:
        return [self.tokenizer.convert_tokens_to_ids(t) for t in REWARD_TOKENS]

    @property
    def video_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids("<|video_pad|>")

    @cached_property
    def special_strings(self) -> tuple[str, ...]:
        """Every string the tokenizer would read as a control token (special and added tokens)."""
        return tuple(sorted(set(self.tokenizer.all_special_tokens) | set(self.tokenizer.get_added_vocab())))

    @staticmethod
    def check_text(caption: str) -> None:
        """Raises ValueError when ``caption`` is not valid Unicode text (e.g. a lone surrogate)."""
        try:
            caption.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"prompt is not valid Unicode ({exc.reason} at character {exc.start})") from None

    def caption_ids(self, caption: str) -> list[int]:
        """Token ids of ``caption`` as plain text: special-token strings in it are split like any text.

        Raises:
            ValueError: the caption is not valid Unicode text (e.g. a lone surrogate).
        """
        self.check_text(caption)
        return self._plain_text_tokenizer.encode(caption, add_special_tokens=False).ids

    @cached_property
    def _plain_text_tokenizer(self):
        """A copy of the backend tokenizer that reads special-token strings as text. A copy, because
        ``split_special_tokens=True`` flips a flag on the shared tokenizer for the duration of a call, and a
        concurrent call from another thread (a serving replica) then lost its ``<|video_pad|>`` tokens."""
        from tokenizers import Tokenizer

        plain = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        plain.encode_special_tokens = True
        return plain

    def template_text(self, video_tokens: int) -> str:
        """The full input text with ``video_tokens`` video pads and :data:`CAPTION_SLOT` where the caption goes."""
        video = "<|video_pad|>" * video_tokens
        if self.scheme.template == "project":
            return TEMPLATE.format(video=video, caption=CAPTION_SLOT)
        from videoalign_ray.reward.videoalign_templates import build_prompt

        user = build_prompt(CAPTION_SLOT, list(self.scheme.eval_dims), self.scheme.template)
        return QWEN2VL_CHAT.format(video=video, text=user)

    def encode_text(self, video_tokens: int, caption: str) -> list[int]:
        """Token ids of the reward template with ``video_tokens`` video pads and ``caption``.

        A caption holding no control-token string is tokenized inside the full template (the tokenization the
        checkpoints were trained with); one that does (``<|video_pad|>``, ``<|im_end|>``, ...) is tokenized
        on its own with special tokens split, so text can never become control tokens.

        Raises:
            ValueError: the caption is not valid Unicode text.
        """
        self.check_text(caption)
        text = self.template_text(video_tokens)
        if not any(tok in caption for tok in self.special_strings) and "\x00" not in caption:
            return self.tokenizer(text.replace(CAPTION_SLOT, caption), add_special_tokens=False)["input_ids"]
        head, tail = text.split(CAPTION_SLOT)
        enc = self.tokenizer([head, tail], add_special_tokens=False)["input_ids"]
        return enc[0] + self.caption_ids(caption) + enc[1]

    def __call__(self, videos: list[np.ndarray], captions: list[str]) -> dict[str, torch.Tensor]:
        """Batch inputs: input_ids / attention_mask / mm_token_type_ids ``(B, L)``, pixel_values_videos,
        video_grid_thw ``(B, 3)``. Text is right-padded."""
        if len(videos) != len(captions):
            raise ValueError(f"{len(videos)} videos but {len(captions)} captions")
        patches, grids, ids = [], [], []
        merge = self.merge_size**2
        for frames, caption in zip(videos, captions, strict=True):
            p, g = patchify(frames, self.patch_size, self.temporal_patch_size, self.merge_size)
            patches.append(p)
            grids.append(g)
            ids.append(self.encode_text(g[0] * g[1] * g[2] // merge, caption))
        enc = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        mm = (enc["input_ids"] == self.video_token_id).long() * 2
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "mm_token_type_ids": mm,
            "pixel_values_videos": torch.cat(patches),
            "video_grid_thw": torch.tensor(grids, dtype=torch.long),
        }
