"""Decoding: every odd encoding decodes with the right orientation and shape or is rejected with a reason."""

import csv
from fractions import Fraction

import av
import numpy as np
import pytest

from videoalign_ray.data.transforms import resize_center_crop, resize_to_budget, smart_resize
from videoalign_ray.data.video import VideoDecodeError, load_video, probe, sample_indices, write_mp4

# Files we decline, and why (see MANIFEST.csv): the truncated mp4 holds 6 of the 745 frames it claims.
EXPECTED_REJECTS = {"mediabunny/annex-b.mp4": "truncated"}


def _manifest(shared_data):
    with open(shared_data / "odd-encodings" / "MANIFEST.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_manifest_has_21_files(shared_data):
    assert len(_manifest(shared_data)) == 21


@pytest.mark.parametrize("idx", range(21))
def test_odd_encoding(shared_data, idx):
    row = _manifest(shared_data)[idx]
    path = shared_data / "odd-encodings" / row["path"]
    if row["path"] in EXPECTED_REJECTS:
        with pytest.raises(VideoDecodeError, match=EXPECTED_REJECTS[row["path"]]) as exc:
            load_video(path, num_frames=8)
        assert str(path) in str(exc.value)
        return
    v = load_video(path, num_frames=8)
    w, h = int(row["width"]), int(row["height"])
    rot = int(row["rotation"])
    exp_hw = (w, h) if rot % 180 else (h, w)
    assert v.frames.shape == (8, *exp_hw, 3), row["path"]
    assert v.frames.dtype == np.uint8
    sar = float(Fraction(row["sar"])) if row["sar"] not in ("None", "") else 1.0
    dh, dw = v.info.display_size
    assert dw / dh == pytest.approx((exp_hw[1] * (sar if rot % 180 == 0 else 1)) / exp_hw[0], rel=0.02)


def test_rotation_matches_ffmpeg_transpose(shared_data):
    """Orientation checked against FFmpeg's own transpose filter (independent of our numpy rotation)."""
    path = shared_data / "odd-encodings" / "mediabunny" / "rotate-buck-bunny.mp4"
    assert probe(path).rotation == -90  # FFmpeg: display rotated 90 degrees clockwise
    ours = load_video(path, num_frames=2).frames[0]
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        graph = av.filter.Graph()
        src = graph.add_buffer(template=s)
        tr = graph.add("transpose", "clock")
        sink = graph.add("buffersink")
        src.link_to(tr)
        tr.link_to(sink)
        graph.configure()
        frame = next(c.decode(s))
        graph.push(frame)
        ref = graph.pull().to_ndarray(format="rgb24")
    assert ours.shape == ref.shape == (1920, 1080, 3)
    assert np.abs(ours.astype(int) - ref.astype(int)).mean() < 2.0


def test_text_file_is_not_a_video(shared_data):
    with pytest.raises(VideoDecodeError, match="not a video"):
        load_video(shared_data / "odd-encodings" / "moviepy" / "LICENCE.txt", num_frames=4)


def test_sample_indices_rules():
    # 10 s at 30 fps sampled at 2 fps -> 20 frames, uniform over [0, 299]
    idx = sample_indices(300, 30.0, target_fps=2.0)
    assert len(idx) == 20 and idx[0] == 0 and idx[-1] == 299
    assert len(sample_indices(10, 30.0, target_fps=2.0)) == 4  # clamped to min 4
    assert len(sample_indices(100000, 1.0, target_fps=2.0)) == 768  # clamped to max
    assert len(sample_indices(301, 30.0, target_fps=2.0)) % 2 == 0
    # linspace(0, 4, 9) rounded half-to-even, as torch.round does in Qwen2-VL's fetch_video
    assert sample_indices(5, 1.0, num_frames=9).tolist() == [0, 0, 1, 2, 2, 2, 3, 4, 4]
    with pytest.raises(ValueError):
        sample_indices(0, 30.0)


def test_resize_rules():
    assert smart_resize(1080, 1920) == (336, 588)
    h, w = smart_resize(1080, 1920)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 448 * 448
    frames = np.zeros((2, 360, 640, 3), np.uint8)
    assert resize_to_budget(frames, sar=2.0).shape[1:3] == smart_resize(360, 1280)
    out = resize_center_crop(np.full((3, 90, 160, 3), 200, np.uint8), 32, 32)
    assert out.shape == (3, 32, 32, 3) and int(out.min()) == 200


def test_write_mp4_roundtrip(tmp_path):
    frames = np.zeros((6, 16, 24, 3), np.uint8)
    frames[:, :, :12] = 255
    p = write_mp4(tmp_path / "x.mp4", frames, fps=4)
    v = load_video(p, num_frames=6)
    assert v.frames.shape == (6, 16, 24, 3)
    assert v.frames[:, :, :10].mean() > 240 and v.frames[:, :, 14:].mean() < 15
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "y.mp4", np.zeros((2, 15, 16, 3), np.uint8))
    assert not (tmp_path / "y.mp4").exists()
