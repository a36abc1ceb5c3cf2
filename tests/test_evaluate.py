"""Win rate with its interval, and the frame grid."""

import numpy as np
import pytest

from videoalign_ray.synthetic.evaluate import frame_grid, win_rate


def test_win_rate_counts_ties_as_half():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([0.0, 2.0, 5.0, 1.0])
    rate, lo, hi = win_rate(a, b)  # outcomes 1, 0.5, 0, 1
    assert rate == pytest.approx(0.625)
    std = np.std([1, 0.5, 0, 1], ddof=1)
    assert hi - rate == pytest.approx(1.96 * std / 2)
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
