"""How a VideoReward checkpoint turns (video, prompt) into rewards: the scoring scheme it was trained with.

A reward model scores right only with the inputs it was trained on, so the scheme travels with every
checkpoint (``reward_config.json`` key ``scheme``) and every scorer follows it:

- ``template``: ``"project"`` (:data:`videoalign_ray.reward.processor.TEMPLATE`: the reward tokens VQ and MQ
  before the caption, TA after it) or one of VideoAlign's ``prompt_template_type`` values
  (``detailed_special``, ``detailed``, ``simple``, ``video_score``, ``none``; VideoAlign ``prompt_template.py``),
  which is wrapped in Qwen2-VL's chat template with the generation prompt, as VideoAlign's ``inference.py``
  (``prepare_batch``: ``processor.apply_chat_template(..., add_generation_prompt=True)``) does.
- ``positions``: ``"mrope"`` (Qwen2-VL's 3-D multimodal rotary positions, what transformers builds) or
  ``"1d"`` (positions ``0..L-1`` on all three rotary axes: VideoAlign's ``Qwen2VLRewardModelBT.forward`` calls the
  language model with ``position_ids=None`` under transformers 4.45, which builds exactly those; the released
  weights were trained and are evaluated with them).
- ``frame_rule``: ``"project"`` (:func:`videoalign_ray.data.sampling.sample_indices`) or ``"videoalign"``
  (qwen-vl-utils' ``smart_nframes`` as in VideoAlign ``vision_process.py``: the frame count capped at the clip's
  length, so short or slow clips get no repeated frames), at ``fps`` or exactly ``num_frames``.
- ``resize``: ``"uint8"`` (PyTorch's uint8 antialiased kernel when downscaling) or ``"float"`` (torchvision's
  tensor resize: float32 antialiased bicubic, clamped and rounded, as VideoAlign's ``fetch_video``).
- ``dtype``: what the checkpoint runs in where the device supports it (``bfloat16`` for the released
  VideoReward, as VideoAlign's inference; always float32 on CPU).
- ``min_pixels`` / ``max_pixels``: the per-frame pixel budget (VideoAlign: ``VIDEO_MIN_PIXELS`` and
  ``data_config.max_frame_pixels``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from videoalign_ray.data.schema import DIMENSIONS

VIDEOALIGN_TEMPLATES = ("detailed_special", "detailed", "simple", "video_score", "none")


@dataclass(frozen=True)
class ScoringScheme:
    """See the module docstring. Defaults are the project's own scheme (what ``jobs/train_reward.py`` trains)."""

    template: str = "project"
    eval_dims: tuple[str, ...] = DIMENSIONS
    positions: Literal["mrope", "1d"] = "mrope"
    frame_rule: Literal["project", "videoalign"] = "project"
    fps: float | None = 2.0
    num_frames: int | None = None
    sample_type: str = "uniform"
    resize: Literal["uint8", "float"] = "uint8"
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 448 * 448
    dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self):
        if self.template != "project" and self.template not in VIDEOALIGN_TEMPLATES:
            raise ValueError(f"unknown prompt template {self.template!r} (project or one of {VIDEOALIGN_TEMPLATES})")
        if self.positions not in ("mrope", "1d"):
            raise ValueError(f"unknown position scheme {self.positions!r} (mrope or 1d)")
        if self.frame_rule not in ("project", "videoalign"):
            raise ValueError(f"unknown frame rule {self.frame_rule!r}")
        if self.sample_type != "uniform":
            raise ValueError(f"sample_type {self.sample_type!r} is not supported (uniform only)")
        if (self.fps is None) == (self.num_frames is None):
            raise ValueError("a scoring scheme samples at fps or takes num_frames: exactly one of them")

    @property
    def chat_template(self) -> bool:
        """VideoAlign's templates go through Qwen2-VL's chat template; the project's is already a chat text."""
        return self.template != "project"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "eval_dims": list(self.eval_dims)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ScoringScheme:
        """A scheme from its dict (unknown keys rejected); ``None`` (a checkpoint written before schemes were
        recorded) is the project scheme."""
        if not d:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown scoring-scheme keys {sorted(unknown)}")
        return cls(**{**d, "eval_dims": tuple(d.get("eval_dims", cls.eval_dims))})

    @classmethod
    def from_videoalign(cls, model_config: dict[str, Any]) -> ScoringScheme:
        """The scheme of a released VideoAlign folder's ``model_config.json`` (its ``data_config``): template
        ``prompt_template_type`` with ``eval_dim``, ``fps`` or ``num_frames``, ``max_frame_pixels``,
        ``sample_type``; 1-D positions, VideoAlign's frame rule and float resize, bf16 (VideoAlign ``inference.py``,
        ``data.py`` ``DataConfig`` defaults for missing keys)."""
        data = model_config.get("data_config", {})
        dims = data.get("eval_dim", "VQ")
        num_frames = data.get("num_frames")
        return cls(
            template=data.get("prompt_template_type", "none"),
            eval_dims=tuple(dims) if isinstance(dims, list) else (dims,),
            positions="1d", frame_rule="videoalign",
            fps=None if num_frames is not None else float(data.get("fps", 2.0)),
            num_frames=int(num_frames) if num_frames is not None else None,
            sample_type=data.get("sample_type", "uniform"), resize="float",
            min_pixels=128 * 28 * 28, max_pixels=int(data.get("max_frame_pixels", 240 * 320)), dtype="bfloat16",
        )
