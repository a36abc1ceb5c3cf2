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


def _marked(path, codec: str, options: dict, n: int = 60) -> str:
    """An mp4 whose frame i shows a white bar at columns 2i..2i+1 (reads back which frame a decoder returned)."""
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream(codec, rate=24)
        s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
        s.options = options
        for i in range(n):
            arr = np.zeros((96, 128, 3), np.uint8)
            arr[:, 2 * i:2 * i + 2] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


@pytest.mark.parametrize("codec,options", [("libx264", {"g": "12", "bf": "3"}),
                                           ("libx265", {"x265-params": "keyint=12:log-level=error"}),
                                           ("mpeg4", {"g": "12", "bf": "2"})])
def test_sampled_frames_are_the_frames_asked_for(tmp_path, codec, options):
    """Sparse sampling returns exactly the frames at the sampled indices, read from the frames' own marks.
    decord seeks wrongly in HEVC and MPEG-4 with B-frames (it returned frames 15, 20, 25 for 11, 16, 21), so
    those go to PyAV; H.264 stays on decord."""
    path = _marked(tmp_path / f"{codec}.mp4", codec, options)
    v = load_video(path, target_fps=5.0)
    shown = [int(np.argmax(f[:, :, 0].mean(axis=0))) // 2 for f in v.distinct]
    assert shown == np.unique(v.indices).tolist(), (v.backend, shown)
    assert v.backend == ("decord" if codec == "libx264" else "pyav")


@pytest.mark.parametrize("name", ["videoalign-examples/videos/example_1_A.mp4", "odd-encodings/moviepy/sar_2x1.mp4"])
def test_transform_while_decoding_equals_transform_after(shared_data, name):
    """``load_video(transform=)`` (decord chunks transformed while the next decodes) gives the bytes of the
    transform applied to the whole decode afterwards."""
    from videoalign_ray.reward.pipeline import FrameSpec, decode_for_reward

    path = next(shared_data.rglob(name.split("/")[-1]))
    v = load_video(path, target_fps=2.0)
    assert v.backend == "decord" and len(v.distinct) > 4  # several chunks
    after = resize_to_budget(v.distinct, sar=v.info.sar)[v.inverse]
    assert np.array_equal(decode_for_reward(str(path), FrameSpec()), after)


def test_a_failing_transform_is_not_a_decoder_failure(shared_data):
    """The transform's own error reaches the caller as raised (no silent PyAV retry); a decord failure in
    a later chunk falls back to PyAV with the right frames."""
    import decord

    from videoalign_ray.data import video as video_mod

    path = shared_data / "videoalign-examples" / "videos" / "example_2_A.mp4"

    def bad(frames, info):
        raise ValueError("transform says no")

    with pytest.raises(ValueError, match="transform says no"):
        load_video(path, target_fps=2.0, transform=bad)
    ref = load_video(path, target_fps=2.0, backend="pyav")
    calls = []
    real = decord.VideoReader.get_batch

    def flaky(self, indices):
        calls.append(indices)
        if len(calls) == 2:
            raise RuntimeError("decord broke mid-stream")
        return real(self, indices)

    mp = pytest.MonkeyPatch()
    mp.setattr(video_mod.decord.VideoReader, "get_batch", flaky)
    try:
        v = load_video(path, target_fps=2.0, transform=lambda f, info: f[:, ::2, ::2])
    finally:
        mp.undo()
    assert len(calls) >= 2 and v.backend == "pyav"
    assert np.array_equal(v.distinct, ref.distinct[:, ::2, ::2])


@pytest.mark.parametrize("rotation,corner,shape", [(180, "bottom-right", (96, 128)), (90, "bottom-left", (128, 96)),
                                                    (-90, "top-right", (128, 96))])
def test_rotation_flags_of_h264_give_the_display_orientation(tmp_path, rotation, corner, shape):
    """An H.264 clip whose coded frames are white in the top-left corner, stored with a display rotation
    (counter-clockwise degrees): turned 180 the white corner is bottom-right, 90 counter-clockwise bottom-left,
    90 clockwise top-right. decord rotates 180-degree clips itself, so rotated clips decode with PyAV (before,
    decord's frames were rotated twice: the right way up on disk, upside down here)."""
    path = tmp_path / f"rot{rotation}.mp4"
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
        s.set_display_rotation(rotation)
        arr = np.zeros((96, 128, 3), np.uint8)
        arr[:32, :32] = 255
        for _ in range(24):
            for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    small = lambda f, info: f[:, ::2, ::2]  # noqa: E731 - a transform runs after the rotation
    for v in (load_video(path, num_frames=4), load_video(path, num_frames=4, transform=small)):
        f = v.distinct[0, ..., 0].astype(float)
        h, w = f.shape
        means = {"top-left": f[:h // 2, :w // 2].mean(), "top-right": f[:h // 2, w // 2:].mean(),
                 "bottom-left": f[h // 2:, :w // 2].mean(), "bottom-right": f[h // 2:, w // 2:].mean()}
        assert max(means, key=means.get) == corner, (v.backend, means)
        assert v.distinct.shape[1:3] in (shape, (shape[0] // 2, shape[1] // 2))


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


@pytest.mark.parametrize("source", ["noise", "video"])
@pytest.mark.parametrize("size", [(308, 588), (336, 560), (100, 700), (40, 40)])
def test_downscale_is_within_two_levels_of_the_float_bicubic_reference(source, size, shared_data):
    """The uint8 kernel used for downscaling (what torchvision v2 runs on uint8 CPU tensors) against the float
    rule of torchvision v1: bicubic, antialiased, rounded and clamped, written out here independently of
    ``transforms._resize``. On video frames within 2 levels; on noise the uint8 kernel clamps its intermediate
    pass, so single pixels at extreme edges differ more while the mean stays below 0.3 levels."""
    import torch
    import torch.nn.functional as F

    from videoalign_ray.data.transforms import _resize

    if source == "noise":
        frames = np.random.default_rng(0).integers(0, 256, (2, 480, 832, 3), dtype=np.uint8)
    else:
        frames = load_video(shared_data / "videoalign-examples" / "videos" / "example_1_A.mp4", num_frames=2).frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).double()
    ref = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    ref = ref.round().clamp(0, 255).permute(0, 2, 3, 1).numpy().astype(np.int16)
    out = _resize(frames, *size)
    assert out.dtype == np.uint8 and out.shape == (2, *size, 3) and out.flags.c_contiguous
    diff = np.abs(out.astype(np.int16) - ref)
    assert diff.max() <= (2 if source == "video" else 16) and diff.mean() < 0.3, (diff.max(), diff.mean())


@pytest.mark.parametrize("shape,size", [((2, 128, 128, 3), (336, 336)), ((2, 240, 416, 3), (252, 420)),
                                        ((2, 180, 320, 3), (252, 448))])
def test_upscale_is_the_antialiased_float_bicubic_of_the_processor(shape, size):
    """Frames below the pixel budget are upscaled as Qwen2-VL's processor does (torchvision's resize with
    ``antialias=True`` on float: PIL's bicubic, a = -0.5), rounded and clamped; written out here in float64.
    The plain bicubic (``antialias=False``, a = -0.75) differs by up to ~30 levels on this noise."""
    import torch
    import torch.nn.functional as F

    from videoalign_ray.data.transforms import _resize

    frames = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).double()
    ref = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    ref = ref.round().clamp(0, 255).permute(0, 2, 3, 1).numpy().astype(np.int16)
    out = _resize(frames, *size)
    assert out.dtype == np.uint8 and out.shape == (2, *size, 3) and out.flags.c_contiguous
    diff = np.abs(out.astype(np.int16) - ref)
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())


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


def _still(path, size, rate):
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for p in s.encode(av.VideoFrame.from_ndarray(np.full((size, size, 3), 90, np.uint8), format="rgb24")):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_limits_refuse_before_decoding_and_repeats_are_views(tmp_path):
    """One 2048x2048 frame at 1/96 fps: the default (training) limits decode it once and repeat it as a view
    (192 frames at 2 fps cost one frame's memory); tight limits refuse it from the header, naming the limit."""
    from videoalign_ray.data.video import DecodeLimits, VideoLimitError

    path = _still(tmp_path / "still.mp4", 2048, Fraction(1, 96))
    v = load_video(path, target_fps=2.0)
    assert v.frames.shape == (192, 2048, 2048, 3) and len(v.distinct) == 1
    assert np.shares_memory(v.frames, v.distinct)
    cases = {"pixels per frame": DecodeLimits(max_frame_pixels=2048 * 2047),
             "duration": DecodeLimits(max_duration_s=95.0),
             "sampled frame count": DecodeLimits(max_sampled_frames=191),
             "decoded size": DecodeLimits(max_decoded_bytes=2048 * 2048 * 3 - 1)}
    for what, limits in cases.items():
        with pytest.raises(VideoLimitError, match=what.split()[0]):
            load_video(path, target_fps=2.0, limits=limits)


def test_containers_that_open_other_files_are_refused(tmp_path):
    """ffconcat / HLS playlists next to a real video: FFmpeg would follow them, our decoder refuses them, and a
    training row holding one is rejected with the reason (the other video of the pair is not the reason)."""
    from videoalign_ray.data.schema import PreferencePair
    from videoalign_ray.reward.pipeline import FrameSpec, _decode_video, pair_rows

    write_mp4(tmp_path / "real.mp4", np.zeros((4, 32, 32, 3), np.uint8))
    scripts = {"concat.mp4": "ffconcat version 1.0\nfile 'real.mp4'\n",
               "playlist.mp4": "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nreal.mp4\n#EXT-X-ENDLIST\n"}
    for name, text in scripts.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(VideoDecodeError, match="not a video container|cannot open video"):
            load_video(tmp_path / name, num_frames=4)
    with av.open(str(tmp_path / "concat.mp4")) as c:  # the attack is real with FFmpeg's default demuxers
        assert c.format.name == "concat"
    spec, cache = FrameSpec(fps=2.0, min_pixels=56 * 56, max_pixels=56 * 56), str(tmp_path / "cache")
    videos = {str(tmp_path / n): _decode_video({"path": str(tmp_path / n)}, spec, cache)
              for n in ("real.mp4", "concat.mp4")}
    pair = PreferencePair(pair_id="p", row=3, prompt="x", chosen=str(tmp_path / "real.mp4"), rejected=str(tmp_path / "concat.mp4"),
                          labels={"VQ": 1, "MQ": 1, "TA": 1})
    items, rejects = pair_rows([pair], videos)
    assert items == [] and [(r.row, r.column, r.value) for r in rejects] == [(3, "rejected", pair.rejected)]
    assert "not a video container" in rejects[0].reason
    assert videos[pair.chosen]["status"] == "decoded" and len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1
