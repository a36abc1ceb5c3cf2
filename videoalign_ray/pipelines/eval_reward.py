"""``jobs/eval_reward.py``: the VideoGen-RewardBench protocol on any preference table.

Each unique (video, prompt) is scored once (Ray Data actor pool), then every pair is judged from the
score margins: accuracy with and without ties per dimension and Overall. Writes ``video_scores.csv`` and
``pair_predictions.csv``, prints the table and logs everything to MLflow.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field

from videoalign_ray.data.schema import DIMENSIONS
from videoalign_ray.errors import DataError, ModelPathError
from videoalign_ray.runtime.fileio import atomic_path
from videoalign_ray.runtime.job import job_run
from videoalign_ray.sections import RuntimeSection

log = logging.getLogger(__name__)


class EvalRewardConfig(RuntimeSection):
    """Config of ``jobs/eval_reward.py``."""

    output_dir: str = "outputs/eval_reward"
    data: str | None = Field(None, description="Preference table; default: synthetic held-out pairs.")
    reward_checkpoint: str = Field("outputs/train_reward/final", description="VideoReward checkpoint: a folder or a "
                                   "Hub id in the local cache.")
    scorer_actors: int = Field(1, ge=1, description="Scoring actors.")
    batch_size: int = Field(8, ge=1)


def _write_csv(df, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def run_eval_reward(cfg: EvalRewardConfig) -> dict:
    """Score every video once, judge every pair; returns the summary with the accuracy table.

    Raises:
        ModelPathError: ``checkpoint`` is not a VideoReward checkpoint. DataError: no pair could be scored.
    """
    from videoalign_ray.runtime.hub import resolve_model_location

    checkpoint = resolve_model_location(cfg.reward_checkpoint, "--reward-checkpoint")
    from videoalign_ray.reward.checkpoint import is_reward_checkpoint

    if not is_reward_checkpoint(checkpoint):
        raise ModelPathError(f"{cfg.reward_checkpoint}: not a VideoReward checkpoint (run jobs/train_reward.py first)")
    with job_run(cfg, start_ray=True) as job:
        return _run(cfg, job, str(checkpoint))


def _run(cfg: EvalRewardConfig, job, checkpoint: str) -> dict:
    import numpy as np
    import pandas as pd

    from videoalign_ray.data.ingest import load_pairs_ray
    from videoalign_ray.data.io import write_rejects
    from videoalign_ray.data.schema import Reject
    from videoalign_ray.reward.pipeline import labels_of
    from videoalign_ray.reward.scoring import score_rows
    from videoalign_ray.reward.train_loop import accuracy_table
    from videoalign_ray.synthetic.world import make_preference_dataset, split_scenes

    out = job.out
    data = cfg.data or str(make_preference_dataset(out / "data", num_pairs=128, scenes=split_scenes(seed=cfg.seed)[1],
                                                   seed=cfg.seed + 1, name="val"))
    loaded = load_pairs_ray(data, keep_ties=True)
    videos = sorted({(p.chosen, p.prompt) for p in loaded.pairs} | {(p.rejected, p.prompt) for p in loaded.pairs})
    scored = score_rows([{"path": v, "prompt": c} for v, c in videos], checkpoint, actors=cfg.scorer_actors,
                        batch_size=cfg.batch_size)
    by_key = {(r["path"], r["prompt"]): r for r in scored}
    dims = DIMENSIONS
    rows, rejects = [], list(loaded.rejects)
    for p in loaded.pairs:
        a, b = by_key[(p.chosen, p.prompt)], by_key[(p.rejected, p.prompt)]
        bad = [(col, r) for col, r in (("chosen", a), ("rejected", b)) if r["error"]]
        if bad:
            rejects.extend(Reject(p.row, col, r["path"], r["error"]) for col, r in bad)
            continue
        lab = labels_of(p)
        rows.append({"row": p.row, "path_A": p.chosen, "path_B": p.rejected, "prompt": p.prompt,
                     **{f"label_{d}": int(lab[i]) for i, d in enumerate(dims)},
                     "label_Overall": -100 if p.overall is None else int(p.overall),
                     **{f"margin_{d}": float(a[d] - b[d]) for d in dims},
                     **{f"raw_A_{d}": float(a[f"raw_{d}"]) for d in dims},
                     **{f"raw_B_{d}": float(b[f"raw_{d}"]) for d in dims}})
    if not rows:
        raise DataError(f"{data}: no pair could be scored; see rejects.csv")
    pairs = pd.DataFrame(rows)
    ra = pairs[[f"raw_A_{d}" for d in dims]].to_numpy()
    rb = pairs[[f"raw_B_{d}" for d in dims]].to_numpy()
    # VideoGen-RewardBench carries its own Overall label: score Overall against it; derive it (majority of
    # VQ/MQ/TA) only for a table without that column.
    has_overall = any(p.overall is not None for p in loaded.pairs)
    table = accuracy_table(ra, rb, pairs[[f"label_{d}" for d in dims]].to_numpy(),
                           pairs["label_Overall"].to_numpy() if has_overall else None)
    _write_csv(pd.DataFrame(scored), out / "video_scores.csv")
    _write_csv(pairs, out / "pair_predictions.csv")
    write_rejects(out / "rejects.csv", rejects)
    lines = [f"{'dimension':<10}{'acc w/o ties':>14}{'acc w/ ties':>13}"]
    for d in (*dims, "Overall"):
        lines.append(f"{d:<10}{table.get(f'acc_{d}', float('nan')):>14.4f}{table.get(f'acc_ties_{d}', float('nan')):>13.4f}")
    text = "\n".join(lines)
    log.info("%s: %d pairs, %d videos\n%s", data, len(rows), len(videos), text)
    tracker = job.tracker
    tracker.log_metrics({k: float(v) for k, v in table.items() if not np.isnan(v)}, step=0)
    for f in ("video_scores.csv", "pair_predictions.csv", "rejects.csv"):
        tracker.log_artifact(out / f)
    summary = {"data": data, "pairs": len(rows), "videos": len(videos), "rejects": len(rejects),
               "overall_label": "table column" if has_overall else "majority of VQ/MQ/TA",
               "table": "\n" + text, "accuracy": table}
    return job.complete(summary)
