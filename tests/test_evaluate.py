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


def test_paired_comparison_pairs_by_prompt_and_seed():
    """paired_comparison is win_rate (bootstrap over prompts) on the two sides' scores, and refuses two lists
    that are not the same samples."""
    from videoalign_ray.synthetic.evaluate import paired_comparison

    rng = np.random.default_rng(1)
    keys = [(f"p{i % 5}", 100 + i) for i in range(20)]
    a = [{"prompt": p, "seed": s, "VQ": rng.random(), "MQ": rng.random(), "TA": rng.random()} for p, s in keys]
    b = [{"prompt": p, "seed": s, "VQ": rng.random(), "MQ": 0.5, "TA": r["TA"]} for (p, s), r in zip(keys, a, strict=True)]
    res = paired_comparison(a, b)
    assert res["n"] == 20
    assert res["win_rate"]["VQ"] == win_rate([r["VQ"] for r in a], [r["VQ"] for r in b], [p for p, _ in keys])
    assert res["win_rate"]["TA"][0] == 0.5  # equal scores: every sample a tie
    assert res["policy_mean"]["MQ"] == pytest.approx(np.mean([r["MQ"] for r in a])) and res["reference_mean"]["MQ"] == 0.5
    with pytest.raises(ValueError, match="same"):
        paired_comparison(a, b[::-1])


def test_score_generators_shares_seeds_and_matches_compare(tmp_path):
    """Every generator is sampled on the same (prompt, seed) list: the base twice gives identical rows, and
    compare_generators (built on it) reports the same scores for its reference side."""
    from videoalign_ray.flow.model import PRESETS, resolve_model_dir
    from videoalign_ray.synthetic.evaluate import Generator, compare_generators, score_generators
    from videoalign_ray.synthetic.world import split_scenes

    p = PRESETS["tiny-world"]
    base = Generator(str(resolve_model_dir("tiny-world", None, tmp_path)))
    held = split_scenes(seed=0)[1][:2]
    kw = dict(samples_per_prompt=2, seed=3, num_frames=p.num_frames, height=p.height, width=p.width,
              max_text_tokens=p.max_text_tokens, steps=3)
    rows, videos = score_generators({"a": base, "b": base}, held, **kw)
    assert rows["a"] == rows["b"] and np.array_equal(videos["a"], videos["b"])
    assert [r["prompt"] for r in rows["a"]] == [s.prompt for s in held for _ in range(2)]
    assert len({r["seed"] for r in rows["a"]}) == 4
    res = compare_generators(base, base, held, **kw)
    assert [x["reference_TA"] for x in res["scores"]] == [r["TA"] for r in rows["a"]]
    assert all(w == (0.5, 0.5, 0.5) for w in res["win_rate"].values())


def test_prompts_for_half_width_matches_the_bootstrap():
    """The prompt count prompts_for_half_width gives for +-0.1 (sd measured on many prompts) gives bootstrap
    intervals of about +-0.1 over that many prompts, and 8 prompts give much wider ones."""
    from videoalign_ray.synthetic.evaluate import paired_comparison, prompts_for_half_width

    rng = np.random.default_rng(0)

    def rows(n_prompts):
        a, b = [], []
        for p in range(n_prompts):
            wins = rng.random(8) < rng.uniform(0.1, 1.0)  # per-prompt win probability varies
            for k, w in enumerate(wins):
                a.append({"prompt": f"p{p}", "seed": k, "VQ": float(w), "MQ": 0.0, "TA": 0.0})
                b.append({"prompt": f"p{p}", "seed": k, "VQ": 0.5, "MQ": 0.0, "TA": 0.0})
        return paired_comparison(a, b)

    def half(res):
        _, lo, hi = res["win_rate"]["VQ"]
        return (hi - lo) / 2

    n = prompts_for_half_width(rows(400)["prompt_sd"]["VQ"])
    assert 25 < n < 50
    assert 0.085 < np.mean([half(rows(n)) for _ in range(10)]) < 0.115
    assert np.mean([half(rows(8)) for _ in range(10)]) > 0.15
    assert prompts_for_half_width(0.0) == 2
