"""Win rate with its interval, and the frame grid."""

import numpy as np
import pytest

from videoalign_ray.synthetic.evaluate import frame_grid, win_rate


def test_win_rate_counts_ties_as_half():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([0.0, 2.0, 5.0, 1.0])
    rate, lo, hi = win_rate(a, b)  # outcomes 1, 0.5, 0, 1
    assert rate == pytest.approx(0.625)
    # Wilson by hand: p = 0.625, n = 4, z = 1.96
    z, p = 1.959964, 0.625
    center = (p + z * z / 8) / (1 + z * z / 4)
    half = z / (1 + z * z / 4) * np.sqrt(p * (1 - p) / 4 + z * z / 64)
    assert (lo, hi) == pytest.approx((center - half, center + half))
    assert lo < rate < hi
    with pytest.raises(ValueError):
        win_rate(a, b[:3])


def test_win_rate_interval_shrinks_with_n():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.3, 1, 400), rng.normal(0, 1, 400)
    r1 = win_rate(a[:50], b[:50])
    r2 = win_rate(a, b)
    assert (r2[2] - r2[1]) < (r1[2] - r1[1])
    assert r2[1] > 0.5  # a is better: the interval excludes 0.5


def test_frame_grid_layout():
    v = np.zeros((4, 8, 6, 3), np.uint8)
    img = frame_grid([v, v + 255], scale=1)
    assert img.size == (4 * (6 + 2), 2 * (8 + 2))
    arr = np.asarray(img)
    assert arr[0, 0].tolist() == [0, 0, 0] and arr[10, 0].tolist() == [255, 255, 255]


def test_win_rate_interval_stays_inside_0_1():
    """The old normal interval printed "0.98 [0.96, 1.01]": near 1 (and at 1) the interval must stay in [0, 1]."""
    a, b = np.ones(128), np.zeros(128)
    a[:3] = -1  # 125 wins of 128
    for clusters in (None, [f"p{i % 8}" for i in range(128)]):
        rate, lo, hi = win_rate(a, b, clusters)
        assert 0.0 <= lo < rate < hi <= 1.0
    rate, lo, hi = win_rate(np.ones(16), np.zeros(16))
    assert rate == hi == 1.0 and 0.75 < lo < 1.0


def test_clustered_interval_counts_prompts_not_samples():
    """16 seeds x 8 prompts where a prompt's samples all agree carry the information of 8 trials, not 128:
    the prompt bootstrap is about as wide as a Wilson interval over 8 prompts, much wider than over 128."""
    per_prompt = np.array([1, 1, 1, 1, 1, 0, 0, 1.0])  # 6 of 8 prompts won
    outcome = np.repeat(per_prompt, 16)
    prompts = np.repeat([f"prompt {i}" for i in range(8)], 16)
    rate, lo, hi = win_rate(outcome, np.full(128, 0.5), prompts)
    assert rate == pytest.approx(0.75)
    naive_lo, naive_hi = win_rate(outcome, np.full(128, 0.5))[1:]
    assert (hi - lo) > 2 * (naive_hi - naive_lo)
    from videoalign_ray.synthetic.evaluate import wilson_interval

    w8 = wilson_interval(0.75, 8)
    assert 0.6 < (hi - lo) / (w8[1] - w8[0]) < 1.4
    assert win_rate(outcome, np.full(128, 0.5), prompts) == (rate, lo, hi)  # seeded: reproducible
