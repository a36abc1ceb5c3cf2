"""VideoGen-RewardBench accuracies (docs/algorithms.md section 4; Deutsch et al. 2023, "Ties Matter", Alg. 1).

``m = r_A - r_B`` (model margin) and ``h`` in {+1, -1, 0} (human label), both shape ``(N,)``. NumPy only.
"""

from __future__ import annotations

import numpy as np


def accuracy_without_ties(m: np.ndarray, h: np.ndarray) -> float:
    """``C / (C + D)`` over pairs with ``h != 0``; a margin of exactly 0 counts as discordant. NaN if none."""
    m, h = np.asarray(m, float), np.asarray(h)
    keep = h != 0
    if not keep.any():
        return float("nan")
    return float(np.mean(np.sign(m[keep]) == h[keep]))


def tie_aware_accuracy(m: np.ndarray, h: np.ndarray) -> tuple[float, float]:
    """Best accuracy with ties over thresholds ``eps``, and the ``eps`` achieving it.

    The model predicts a tie when ``|m| <= eps``; accuracy(eps) = (concordant non-tie predictions on
    non-tie labels + tie predictions on tie labels) / N. Candidates: no tie at all (eps below every |m|,
    returned as ``-inf``) and every distinct ``|m|``. One sort, one cumulative sweep:
    O(N log N). Raises ValueError on empty input.
    """
    m, h = np.asarray(m, float), np.asarray(h)
    n = len(m)
    if n == 0:
        raise ValueError("no pairs")
    a = np.abs(m)
    correct_if_not_tie = (h != 0) & (np.sign(m) == h)
    correct_if_tie = h == 0
    order = np.argsort(a, kind="stable")
    a_sorted = a[order]
    gain = (correct_if_tie.astype(int) - correct_if_not_tie.astype(int))[order]
    base = int(correct_if_not_tie.sum())  # eps = -inf: nothing predicted a tie
    cum = base + np.cumsum(gain)
    # only the last index of each run of equal |m| is a valid threshold (eps includes all equal values)
    last_of_run = np.r_[a_sorted[1:] != a_sorted[:-1], True]
    cand_acc = np.r_[base, cum[last_of_run]]
    cand_eps = np.r_[-np.inf, a_sorted[last_of_run]]
    best = int(np.argmax(cand_acc))
    return float(cand_acc[best] / n), float(cand_eps[best])
