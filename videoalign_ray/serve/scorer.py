"""The in-process reward scorer shared by the Serve replicas, the benchmark and local callers (no Ray here).

``RewardScorer.score(frames_list, prompts)`` runs one batched forward pass of a VideoReward checkpoint and
returns normalised VQ / MQ / TA and ``Overall = VQ + MQ + TA`` per video (docs/algorithms.md section 4).
Optional: a latent reward checkpoint for Flow-NRG ``guide`` calls.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from videoalign_ray.data.schema import DIMENSIONS
from videoalign_ray.data.video import DecodeLimits, VideoDecodeError
from videoalign_ray.errors import ModelPathError

DIMS = DIMENSIONS


class RewardScorer:
    """A loaded VideoReward checkpoint plus its frame settings (fps, pixel budget).

    Raises (constructor): FileNotFoundError for a folder that is not a reward checkpoint.
    """

    def __init__(self, checkpoint: str | Path, latent_reward: str | Path | None = None, device: str = "auto"):
        from videoalign_ray.reward.checkpoint import (
            is_reward_checkpoint,
            load_reward_checkpoint,
            place_for_scoring,
        )
        from videoalign_ray.reward.pipeline import FrameSpec
        from videoalign_ray.reward.videoalign_checkpoint import choose_checkpoint, is_videoalign_folder

        checkpoint = Path(checkpoint)
        if not is_reward_checkpoint(checkpoint):
            raise ModelPathError(f"{checkpoint}: not a VideoReward checkpoint (no reward_config.json or "
                                 "model_config.json)")
        self.checkpoint = str(checkpoint.resolve())
        from videoalign_ray.runtime.placement import worker_device

        # "auto": what this replica has (a logical GPU without CUDA computes on CPU)
        self.device = str(worker_device()) if device == "auto" else device
        model, self.proc = load_reward_checkpoint(checkpoint)
        self.model = place_for_scoring(model, self.proc.scheme, self.device)
        self.spec = FrameSpec.of(self.proc.scheme)
        if is_videoalign_folder(checkpoint):
            self.model_id = f"{checkpoint.name}@{choose_checkpoint(checkpoint).name}"
        else:
            rc = json.loads((checkpoint / "reward_config.json").read_text())
            self.model_id = f"{checkpoint.name}@steps={rc.get('steps', 'untrained')}"
        self.latent = None
        if latent_reward:
            from videoalign_ray.reward.latent import load_latent_reward_spec

            self.latent = load_latent_reward_spec(latent_reward).to(self.device).requires_grad_(False)

    def decode(self, path: str | Path, limits: DecodeLimits | None = None) -> np.ndarray:
        """uint8 ``(T, H, W, 3)`` frames of a video file at the checkpoint's fps and pixel budget.

        Raises:
            VideoDecodeError: the file is not a decodable video; VideoLimitError: over ``limits``.
        """
        from videoalign_ray.reward.pipeline import decode_for_reward

        try:
            return decode_for_reward(str(path), self.spec, limits)
        except (OSError, ValueError) as exc:
            raise VideoDecodeError(f"{path}: {exc}") from exc

    def prompt_tokens(self, prompt: str) -> int:
        """Tokens of ``prompt`` as plain text (special-token strings are text, never control tokens).

        Raises:
            ValueError: not valid Unicode.
        """
        return len(self.proc.caption_ids(prompt))

    def prepare(self, frames: np.ndarray) -> np.ndarray:
        """Frames given directly (uint8 ``(T, H, W, 3)``) resized to the pixel budget like decoded ones.

        Raises:
            ValueError: not a non-empty uint8 array of shape (T, H, W, 3).
        """
        from videoalign_ray.data.transforms import resize_to_budget

        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W, 3) with T >= 1, got {frames.dtype} {frames.shape}")
        return resize_to_budget(frames, factor=self.spec.factor, min_pixels=self.spec.min_pixels,
                                max_pixels=self.spec.max_pixels, kernel=self.spec.kernel)

    @torch.no_grad()
    def score(self, frames: list[np.ndarray], prompts: list[str]) -> list[dict[str, float]]:
        """One forward pass over the batch; returns ``[{"VQ", "MQ", "TA", "Overall"}]`` (normalised)."""
        if not frames:
            return []
        inputs = {k: v.to(self.device) for k, v in self.proc(frames, prompts).items()}
        raw = self.model(**inputs).float().cpu().numpy()
        norm = (raw - self.model.norm_mean.float().cpu().numpy()) / self.model.norm_std.float().cpu().numpy()
        return [{**{d: float(row[k]) for k, d in enumerate(DIMS)}, "Overall": float(row.sum())} for row in norm]

    def guide(self, latents: np.ndarray, t: np.ndarray, prompt_embeds: np.ndarray,
              weights: np.ndarray) -> np.ndarray:
        """Flow-NRG gradient ``(B, C, F, h, w)`` float32 of ``sum_d weights_d r_d`` from the latent reward model.

        Raises:
            RuntimeError: no latent reward model is loaded.
        """
        from videoalign_ray.reward.latent import reward_gradient

        if self.latent is None:
            raise RuntimeError("this reward app has no latent reward model (deploy with --latent-reward DIR)")
        grad = reward_gradient(self.latent, torch.as_tensor(latents, dtype=torch.float32),
                               torch.as_tensor(t, dtype=torch.float32),
                               torch.as_tensor(prompt_embeds, dtype=torch.float32),
                               torch.as_tensor(weights, dtype=torch.float32))
        return grad.cpu().numpy()


def make_untrained_checkpoint(out_dir: str | Path, seed: int = 0, *, pixels: int = 56 * 56, hidden: int = 128,
                              layers: int = 2, vision_dim: int = 64, vision_depth: int = 2) -> Path:
    """A tiny random-init VideoReward checkpoint (tokenizer built from the world's prompts), for a default
    run without a trained one and for serving benchmarks (``pixels`` per frame and the model sizes set how
    compute-bound it is). Its scores are meaningless; it exercises the serving path only."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from videoalign_ray.reward.checkpoint import save_reward_checkpoint
    from videoalign_ray.reward.model import VideoRewardModel, tiny_qwen2vl_config
    from videoalign_ray.reward.processor import VideoRewardProcessor, build_tiny_tokenizer
    from videoalign_ray.synthetic.world import all_scenes

    out_dir = Path(out_dir)
    if (out_dir / "reward_config.json").is_file():
        return out_dir
    tok = build_tiny_tokenizer([s.prompt for s in all_scenes()])
    proc = VideoRewardProcessor(tok)
    torch.manual_seed(seed)
    backbone = Qwen2VLForConditionalGeneration(tiny_qwen2vl_config(tok, hidden=hidden, layers=layers,
                                                                   vision_dim=vision_dim, vision_depth=vision_depth))
    model = VideoRewardModel(backbone, proc.reward_token_ids, output_dim=3)
    return save_reward_checkpoint(model.eval(), tok, out_dir, {"fps": 8.0, "min_pixels": pixels, "max_pixels": pixels})
