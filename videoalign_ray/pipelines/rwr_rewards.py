"""Per-video rewards for Flow-RWR: from the table's MOS columns or from a VideoReward checkpoint (Ray Data).

Both sources give normalised ``(VQ, MQ, TA)`` per video; :func:`pair_extras` turns them into the
``reward_chosen`` / ``reward_rejected`` columns the training loop reads (multi-objective weighted mean,
docs/algorithms.md section 2). RWR loads pairs with ``keep_ties=True``, so ``chosen`` is video A and ``rejected``
video B of every row: both are training videos, each with its own reward.
"""

from __future__ import annotations

import numpy as np

from videoalign_ray.data.io import DataError
from videoalign_ray.data.schema import DIMENSIONS, PreferencePair, Reject


def mos_rewards(pairs: list[PreferencePair], weights: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """``{video path: (3,) float32}``: the 1-5 MOS columns z-normalised per dimension over the unique videos.

    Dimensions with weight 0 may be missing (they become 0).

    Raises:
        DataError: a dimension with a positive weight lacks its MOS for some video (names the row).
    """
    raw: dict[str, list[float]] = {}
    for p in pairs:
        for side, path in (("A", p.chosen), ("B", p.rejected)):
            vals = []
            for d, w in zip(DIMENSIONS, weights, strict=True):
                v = p.mos.get(f"{side}_{d}")
                if v is None and w > 0:
                    raise DataError(
                        f"row {p.row}: no MOS_{side}_{d} column value for Flow-RWR rewards; add MOS columns, "
                        f"pass --reward-checkpoint to score the videos, or give dimension {d} weight 0"
                    )
                vals.append(np.nan if v is None else float(v))
            raw[path] = vals
    paths = sorted(raw)
    table = np.array([raw[p] for p in paths], np.float64)
    mean = np.nanmean(table, axis=0) if len(paths) else np.zeros(3)
    std = np.nanstd(table, axis=0) if len(paths) else np.ones(3)
    z = np.nan_to_num((table - mean) / np.where(std > 0, std, 1.0))
    return {p: z[i].astype(np.float32) for i, p in enumerate(paths)}


def checkpoint_rewards(
    pairs: list[PreferencePair], checkpoint: str, *, actors: int = 1
) -> tuple[dict[str, np.ndarray], list[Reject]]:
    """Score every unique (video, prompt) with a VideoReward checkpoint through Ray Data (normalised scores).

    Returns ``({video path: (3,) float32}, rejects)``; a video that cannot be scored rejects each pair using it.
    """
    from videoalign_ray.reward.scoring import score_rows

    rows = sorted({(p.chosen, p.prompt) for p in pairs} | {(p.rejected, p.prompt) for p in pairs})
    scored = score_rows([{"path": v, "prompt": c} for v, c in rows], checkpoint, actors=actors)
    by_key = {(r["path"], r["prompt"]): r for r in scored}
    rewards: dict[str, np.ndarray] = {}
    rejects: list[Reject] = []
    for p in pairs:
        for col, path in (("chosen", p.chosen), ("rejected", p.rejected)):
            r = by_key[(path, p.prompt)]
            if r["error"]:
                rejects.append(Reject(p.row, col, path, f"reward scoring failed: {r['error']}"))
            else:  # a video shared by several prompts keeps the score of its last prompt (rare in practice)
                rewards[path] = np.array([r[d] for d in DIMENSIONS], np.float32)
    return rewards, rejects


def pair_extras(
    pairs: list[PreferencePair], video_rewards: dict[str, np.ndarray], weights: tuple[float, float, float]
) -> dict[str, dict[str, np.float32]]:
    """``{pair_id: {reward_chosen, reward_rejected}}`` with the weighted mean over dimensions."""
    import torch

    from videoalign_ray.flow.losses import combine_rewards

    out = {}
    for p in pairs:
        if p.chosen in video_rewards and p.rejected in video_rewards:
            r = combine_rewards(torch.from_numpy(np.stack([video_rewards[p.chosen], video_rewards[p.rejected]])),
                                weights).numpy()
            out[p.pair_id] = {"reward_chosen": np.float32(r[0]), "reward_rejected": np.float32(r[1])}
    return out
