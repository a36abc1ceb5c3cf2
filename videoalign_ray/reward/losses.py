"""Reward-model losses as pure tensor functions (docs/algorithms.md section 4).

Rewards ``r_a``, ``r_b``: ``(B, D)`` float (D = 3 dimensions VQ, MQ, TA). Labels ``(B, D)`` int:
+1 = A better, -1 = B better, 0 = tie; anything else (e.g. -100) is invalid and masked out.
Reduction: mean over the valid (pair, dimension) entries (upstream VideoAlign averages masked zeros too;
we divide by the number of valid entries). With no valid entry the loss is 0 (and has a gradient of 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TIE_K = 5.0
"""Rao-Kupper tie parameter k of BTT (paper: 5)."""


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def bt_loss(r_a: torch.Tensor, r_b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry: ``-logsigmoid(r_chosen - r_rejected)`` over non-tie labels; ties are excluded."""
    sign = labels.to(r_a.dtype)
    valid = (labels == 1) | (labels == -1)
    return _masked_mean(-F.logsigmoid(sign * (r_a - r_b)), valid)


def btt_probabilities(r_a: torch.Tensor, r_b: torch.Tensor, k: float = TIE_K):
    """Rao-Kupper probabilities ``(P(A>B), P(B>A), P(tie))``; they sum to 1.

    ``P(A>B) = e^rA / (e^rA + k e^rB)``, ``P(B>A) = e^rB / (e^rB + k e^rA)``, ``P(tie) = 1 - both``.
    """
    p_a = torch.sigmoid(r_a - r_b - math.log(k))
    p_b = torch.sigmoid(r_b - r_a - math.log(k))
    return p_a, p_b, 1 - p_a - p_b


def btt_loss(r_a: torch.Tensor, r_b: torch.Tensor, labels: torch.Tensor, k: float = TIE_K) -> torch.Tensor:
    """Bradley-Terry-with-ties (Rao-Kupper), the exact negative log-probability of the label.

    Win: ``-logsigmoid(r_w - r_l - log k)``; tie:
    ``-logsigmoid(rA - rB - log k) - logsigmoid(rB - rA - log k) - log(k^2 - 1)``.
    """
    log_k = math.log(k)
    d = r_a - r_b
    win_a = -F.logsigmoid(d - log_k)
    win_b = -F.logsigmoid(-d - log_k)
    tie = -F.logsigmoid(d - log_k) - F.logsigmoid(-d - log_k) - math.log(k * k - 1)
    per = torch.where(labels == 1, win_a, torch.where(labels == -1, win_b, tie))
    valid = (labels == 1) | (labels == -1) | (labels == 0)
    return _masked_mean(per, valid)


def regression_loss(rewards: torch.Tensor, mos: torch.Tensor) -> torch.Tensor:
    """``mse(r, mos - 3)`` on 1-5 Likert scores; NaN scores are masked out. Shapes ``(N, D)``."""
    valid = ~torch.isnan(mos)
    target = torch.where(valid, mos - 3.0, torch.zeros_like(mos))
    return _masked_mean((rewards - target) ** 2, valid)
