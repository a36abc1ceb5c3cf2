"""Pair selection for online preference collection (docs/algorithms.md section 6; paper section 5).

Pure functions over per-sample rewards: no Ray, no I/O. A prompt's K samples have rewards ``(K, 3)``
(VQ, MQ, TA); their weighted reward ``r = sum_d lambda_d r_d`` decides chosen vs rejected.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

PairRule = Literal["best-worst", "all-above-margin", "guided-vs-unguided"]


def sample_seed(seed: int, round_: int, prompt_index: int, sample: int) -> int:
    """Noise seed of sample ``sample`` of prompt ``prompt_index`` in round ``round_`` (0 <= seed < 2**31).

    A hash, so a rerun reproduces every video and no two (round, prompt, sample) share noise.
    """
    raw = f"online\0{seed}\0{round_}\0{prompt_index}\0{sample}".encode()
    return int.from_bytes(hashlib.sha256(raw).digest()[:4], "little") & 0x7FFFFFFF


@dataclass
class Selection:
    """Chosen/rejected sample indices with their weighted-reward margin, and what was not kept.

    ``ties``: candidate pairs (best-worst: prompt groups) whose weighted rewards are equal;
    ``below_margin``: candidates with ``0 < margin < min_margin``.
    """

    pairs: list[tuple[int, int, float]] = field(default_factory=list)
    ties: int = 0
    below_margin: int = 0


def weighted_reward(rewards: np.ndarray, weights: tuple[float, float, float]) -> np.ndarray:
    """``rewards`` ``(K, 3)`` float -> ``(K,)`` float64 ``sum_d weights_d * rewards[:, d]``.

    Raises:
        ValueError: ``rewards`` is not ``(K, 3)`` or holds a non-finite value.
    """
    r = np.asarray(rewards, np.float64)
    if r.ndim != 2 or r.shape[1] != 3:
        raise ValueError(f"rewards must be (K, 3), got {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError("rewards hold a non-finite value")
    return r @ np.asarray(weights, np.float64)


def select_pairs(rewards: np.ndarray, weights: tuple[float, float, float], rule: PairRule = "best-worst",
                 min_margin: float = 0.0) -> Selection:
    """Select preference pairs among one prompt's K samples.

    ``best-worst``: the highest vs the lowest weighted reward (first index on equal rewards), one pair or
    none. ``all-above-margin``: every (i, j), i < j, ordered so the chosen has the higher reward.
    ``guided-vs-unguided``: K even, samples ``[0, K/2)`` sampled with Flow-NRG guidance and ``[K/2, K)``
    without it from the same noise; each (i, i + K/2) ordered by reward, so a pair differs only by what the
    guidance changed. A candidate with margin 0 is a tie; one with margin below ``min_margin`` is counted,
    not kept.

    Returns:
        Selection with ``(chosen, rejected, margin)`` tuples, margin > 0 and >= ``min_margin``.

    Raises:
        ValueError: bad ``rewards`` shape/values, fewer than 2 samples (an odd K for ``guided-vs-unguided``)
            or an unknown rule.
    """
    w = weighted_reward(rewards, weights)
    if len(w) < 2:
        raise ValueError(f"need at least 2 samples per prompt, got {len(w)}")
    if rule == "best-worst":
        candidates = [(int(np.argmax(w)), int(np.argmin(w)))]
    elif rule == "all-above-margin":
        candidates = [(i, j) if w[i] >= w[j] else (j, i) for i in range(len(w)) for j in range(i + 1, len(w))]
    elif rule == "guided-vs-unguided":
        if len(w) % 2:
            raise ValueError(f"guided-vs-unguided needs an even number of samples per prompt, got {len(w)}")
        h = len(w) // 2
        candidates = [(i, i + h) if w[i] >= w[i + h] else (i + h, i) for i in range(h)]
    else:
        raise ValueError(f"unknown pair rule {rule!r} (best-worst, all-above-margin or guided-vs-unguided)")
    out = Selection()
    for c, r in candidates:
        margin = float(w[c] - w[r])
        if margin <= 0:
            out.ties += 1
        elif margin < min_margin:
            out.below_margin += 1
        else:
            out.pairs.append((c, r, margin))
    return out


def round_table(records: list[dict], rewards: list[list[list[float]]], round_: int, *,
                weights: tuple[float, float, float], pair_rule: str, min_margin: float):
    """The round's pair rows and its selection counts (pure: records and rewards in, a DataFrame out).

    ``records``: the generation records of the round's prompt groups; ``rewards``: per group, per sample, the
    (VQ, MQ, TA) rewards. Pairs per group by :func:`select_pairs` with ``weights``, ``pair_rule``, ``min_margin``.
    """
    import pandas as pd

    from videoalign_ray.data.schema import DIMENSIONS

    rows, counts = [], {"groups": len(records), "pairs": 0, "ties": 0, "below_margin": 0}
    for rec, group in zip(records, rewards, strict=True):
        sel = select_pairs(np.asarray(group), weights, pair_rule, min_margin)
        counts["ties"] += sel.ties
        counts["below_margin"] += sel.below_margin
        for c, r, margin in sel.pairs:
            sc, sr = rec["samples"][c], rec["samples"][r]
            row = {"round": round_, "prompt": rec["prompt"], "prompt_index": rec["prompt_index"],
                   "chosen": sc["path"], "rejected": sr["path"], "chosen_latent_key": sc["latent_key"],
                   "rejected_latent_key": sr["latent_key"], "chosen_seed": sc["seed"], "rejected_seed": sr["seed"],
                   "margin": margin, "policy_version": rec["policy_version"]}
            for i, d in enumerate(DIMENSIONS):
                row[f"reward_chosen_{d}"], row[f"reward_rejected_{d}"] = group[c][i], group[r][i]
            rows.append(row)
    counts["pairs"] = len(rows)
    return pd.DataFrame(rows), counts
