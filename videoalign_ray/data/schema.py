"""Preference-triple schema: labels, dimensions and the records the rest of the project passes around.

Formats (docs/algorithms.md section 5):
- VideoAlign: ``path_A, path_B, prompt, VQ, MQ, TA`` with labels ``A`` / ``B`` / ``same``, optional
  ``fps_A, num_frames_A, fps_B, num_frames_B`` and Likert ``MOS_A_VQ ... MOS_B_TA``.
- chosen/rejected: ``prompt, chosen, rejected`` and an optional ``dimension`` column (VQ/MQ/TA or FETV's
  SQ/TQ/Alignment); a row without ``dimension`` prefers ``chosen`` on every dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DIMENSIONS: tuple[str, ...] = ("VQ", "MQ", "TA")
"""Visual quality, motion quality, text alignment: the paper's three reward dimensions, in head order."""

FETV_DIMENSIONS = {"SQ": "VQ", "TQ": "MQ", "ALIGNMENT": "TA", "VQ": "VQ", "MQ": "MQ", "TA": "TA"}
"""FETV's names (static quality, temporal quality, alignment) mapped to the paper's dimensions."""

# +1: A better, -1: B better, 0: tie.
_LABELS = {"A": 1, "B": -1, "SAME": 0, "TIE": 0}


class LabelError(ValueError):
    """A preference label is not one of A / B / same."""


def parse_label(value: object) -> int | None:
    """Parse a VideoAlign label into +1 (A better), -1 (B better), 0 (tie), or None when missing.

    Raises:
        LabelError: the value is present but not A, B, same (or tie), case-insensitive.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    if text == "":
        return None
    try:
        return _LABELS[text.upper()]
    except KeyError:
        raise LabelError(f"unknown label {text!r} (expected A, B or same)") from None


def overall_label(labels: dict[str, int | None]) -> int | None:
    """Majority vote over the valid per-dimension labels: sign of their sum (0 = tie, None = no valid label)."""
    valid = [v for v in labels.values() if v is not None]
    if not valid:
        return None
    s = sum(valid)
    return (s > 0) - (s < 0)


@dataclass(frozen=True)
class Reject:
    """One rejected input row: 1-based data row number, offending column and value, and why."""

    row: int
    column: str
    value: str
    reason: str


@dataclass(frozen=True)
class PreferencePair:
    """A (chosen, rejected) video pair for one prompt, with resolved absolute paths.

    ``row`` is the 1-based data row of the source table (header excluded); ``labels`` keeps the per-dimension
    labels from A's point of view (+1 A better) for reward-model training; ``mos`` the optional 1-5 scores.
    """

    pair_id: str
    row: int
    prompt: str
    chosen: str
    rejected: str
    labels: dict[str, int | None] = field(default_factory=dict)
    mos: dict[str, float] = field(default_factory=dict)
    overall: int | None = None
    """The table's own Overall label (A's point of view) when it has an ``Overall`` column, else None."""
