"""Generator clips at the model's frame rate: a window of consecutive-in-time frames, trimmed or rejected when
the clip is short, never padded (data/sampling.ClipRule). The decode tests use clips whose frames carry their
own index as their brightness, so what was decoded is read back from the pixels."""

from __future__ import annotations

import numpy as np
import pytest

from videoalign_ray.data.sampling import ClipRule, ShortClipError, clip_indices

WAN = ClipRule(fps=16, num_frames=81, temporal_factor=4)


def test_a_long_clip_at_the_model_rate_gives_consecutive_frames_in_the_middle():
    idx, trimmed, resampled = clip_indices(160, 16.0, WAN)  # 10 s at 16 fps
    assert len(idx) == 81 and not trimmed and not resampled
    assert (np.diff(idx) == 1).all() and idx[0] == 40  # centred: t0 = (159/16 - 80/16) / 2 s = source frame 39.5 -> 40
    idx_start, _, _ = clip_indices(160, 16.0, ClipRule(fps=16, num_frames=81, start="start"))
    assert idx_start.tolist() == list(range(81))


def test_other_frame_rates_keep_the_clip_speed():
    # 10 s at 30 fps: 81 frames 1/16 s apart, i.e. 1.875 source frames per model frame; the window spans 5 s
    idx, trimmed, resampled = clip_indices(300, 30.0, WAN)
    assert resampled and not trimmed and len(idx) == 81
    assert (idx[-1] - idx[0]) / 30.0 == pytest.approx(80 / 16, abs=1 / 30)
    # 3 s at 8 fps: the clip holds 47 model-rate frames: trimmed to 45 (4k+1), each source frame shown twice
    idx, trimmed, resampled = clip_indices(24, 8.0, WAN)
    assert trimmed and resampled and len(idx) == 45 and (len(idx) - 1) % 4 == 0
    assert (idx[-1] - idx[0]) / 8.0 == pytest.approx(44 / 16, abs=1 / 8)
    assert np.bincount(idx).max() <= 2  # a frame lasts 1/8 s = two model frames, never more (no padding)


def test_short_clips_are_rejected_with_their_reason():
    with pytest.raises(ShortClipError, match=r"short clip: 24 frames at 8 fps hold 47 .* \(--short-clips reject\)"):
        clip_indices(24, 8.0, ClipRule(fps=16, num_frames=81, short_clips="reject"))
    with pytest.raises(ShortClipError, match=r"trimming leaves 29 < the minimum 41"):
        clip_indices(16, 8.0, WAN)  # 2 s: 31 frames at 16 fps -> 29, under half the window
    assert WAN.minimum == 41 and ClipRule(fps=4, num_frames=8, temporal_factor=1).minimum == 4
    assert WAN.key() != ClipRule(fps=16, num_frames=81, start="start").key()  # the rule enters the cache keys


def _indexed_clip(path, n: int, fps: float):
    """A lossless clip whose frame i is uniformly gray at level 8 * i."""
    from videoalign_ray.data.encode import write_mp4

    frames = np.repeat((np.arange(n, dtype=np.uint8) * 8)[:, None, None, None], 32 * 32 * 3).reshape(n, 32, 32, 3)
    return write_mp4(path, frames, fps=fps, lossless=True)


@pytest.mark.parametrize("n,fps", [(40, 16.0), (30, 10.0), (12, 6.0)])
def test_decoded_frames_are_the_window_asked_for(tmp_path, n, fps):
    from videoalign_ray.data.video import expand_frames, load_video

    rule = ClipRule(fps=8, num_frames=9, temporal_factor=4)  # 9 frames at 8 fps: a 1 s window
    path = _indexed_clip(tmp_path / "clip.mp4", n, fps)
    video = load_video(path, clip_rule=rule)
    frames = expand_frames(video.distinct, video.inverse)
    read_back = np.round(frames[:, 16, 16].astype(float).mean(axis=1) / 8).astype(int)
    want, trimmed, resampled = clip_indices(n, fps, rule)
    assert read_back.tolist() == want.tolist()
    assert (video.trimmed, video.resampled) == (trimmed, resampled)
    # consecutive in time at the model's rate: each step moves ~fps/8 source frames
    assert (read_back[-1] - read_back[0]) / fps == pytest.approx((len(want) - 1) / 8, abs=1 / fps)


def test_flow_job_counts_trimmed_resampled_and_rejected_clips(local_ray, tmp_path):
    """Flow-DPO on clips of other rates and lengths: one clip at 24 fps (resampled), one short clip (trimmed to
    6 of the tiny preset's 8 frames at 4 fps: a micro-batch of 8- and 6-frame latents trains on 6), one too
    short (rejected with its reason); the job trains on what is left."""
    import pandas as pd

    from videoalign_ray.config import validate_config
    from videoalign_ray.pipelines.flow_dpo import FlowDPOConfig, run_flow_job
    from videoalign_ray.synthetic.world import make_preference_dataset

    csv = make_preference_dataset(tmp_path / "data", num_pairs=4, seed=5)
    df = pd.read_csv(csv)
    videos = tmp_path / "data"
    _indexed_clip(videos / "fast.mp4", 48, 24.0)  # 2 s at 24 fps
    _indexed_clip(videos / "short.mp4", 6, 4.0)  # 1.25 s at 4 fps: 6 frames, trimmed (minimum 4)
    _indexed_clip(videos / "tiny.mp4", 3, 4.0)  # 0.5 s: 3 frames < 4, rejected
    df.loc[0, "path_A"], df.loc[0, "path_B"] = "fast.mp4", "short.mp4"
    df.loc[1, "path_B"] = "tiny.mp4"
    df.loc[0, "VQ"] = df.loc[1, "VQ"] = "A"
    df.to_csv(csv, index=False)
    s = run_flow_job(validate_config(FlowDPOConfig, dict(
        data=str(csv), dimension="VQ", output_dir=str(tmp_path / "out"), max_steps=2, num_samples=0,
        num_workers=1, batch_size=2)))
    stats = s["data_stats"]
    assert stats["videos_trimmed"] == 1 and stats["videos_too_short"] == 1
    assert stats["videos_resampled"] >= 2  # fast.mp4 (24 fps) and the world's clips (8 fps) at the model's 4
    rejects = pd.read_csv(s["rejects_csv"])
    assert rejects["reason"].str.contains("short clip").sum() == 1
    assert s["steps"] == 2
