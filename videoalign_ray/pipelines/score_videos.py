"""``jobs/score_videos.py``: score a folder or a table of videos with VideoReward through Ray Data
(for data filtering and reject sampling); writes Parquet or CSV with VQ / MQ / TA / Overall."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from videoalign_ray.errors import DataError
from videoalign_ray.runtime.fileio import atomic_path
from videoalign_ray.runtime.job import job_run
from videoalign_ray.sections import RuntimeSection

VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".ts"}


class ScoreVideosConfig(RuntimeSection):
    """Config of ``jobs/score_videos.py``."""

    output_dir: str = "outputs/score_videos"
    data: str | None = Field(None, description="A folder of videos (prompt = file name) or a table with "
                              "path and prompt columns; default: the synthetic held-out pairs' videos.")
    reward_checkpoint: str = Field("outputs/train_reward/final", description="VideoReward checkpoint: a folder or a "
                                   "Hub id in the local cache.")
    scores_file: str = Field("scores.parquet", description="File name in output_dir: .parquet or .csv.")
    scorer_actors: int = Field(1, ge=1, description="Scoring actors.")
    batch_size: int = Field(8, ge=1)


def _rows(source: Path) -> list[dict]:
    import pandas as pd

    from videoalign_ray.data.io import read_table

    if source.is_dir():
        return [{"path": str(p.resolve()), "prompt": p.stem} for p in sorted(source.rglob("*"))
                if p.suffix.lower() in VIDEO_SUFFIXES]
    df = read_table(source)
    if not {"path", "prompt"} <= set(df.columns):
        raise DataError(f"{source}: a table to score needs path and prompt columns, has {list(df.columns)}")
    return [{"path": str((source.parent / str(r.path)).resolve()), "prompt": str(r.prompt)}
            for r in pd.DataFrame(df).itertuples()]


def run_score_videos(cfg: ScoreVideosConfig) -> dict:
    with job_run(cfg, start_ray=True) as job:
        return _run(cfg, job)


def _run(cfg: ScoreVideosConfig, job) -> dict:
    import pandas as pd

    from videoalign_ray.reward.scoring import score_rows
    from videoalign_ray.runtime.hub import resolve_model_location
    from videoalign_ray.synthetic.world import make_preference_dataset, split_scenes

    out = job.out
    if cfg.data:
        rows = _rows(Path(cfg.data))
    else:
        csv = make_preference_dataset(out / "data", num_pairs=16, scenes=split_scenes(seed=cfg.seed)[1], name="val")
        df = pd.read_csv(csv)
        rows = [{"path": str((csv.parent / p).resolve()), "prompt": c}
                for col in ("path_A", "path_B") for p, c in zip(df[col], df["prompt"], strict=True)]
    if not rows:
        raise DataError(f"{cfg.data}: no video found")
    scored = pd.DataFrame(score_rows(rows, str(resolve_model_location(cfg.reward_checkpoint, "--reward-checkpoint")), actors=cfg.scorer_actors, batch_size=cfg.batch_size))
    target = out / cfg.scores_file
    with atomic_path(target) as tmp:
        if target.suffix == ".csv":
            scored.to_csv(tmp, index=False)
        else:
            scored.to_parquet(tmp, index=False)
    failed = int(scored["error"].notna().sum())
    job.tracker.log_metrics({"videos": len(scored), "failed": failed,
                             "mean_Overall": float(scored["Overall"].mean())}, step=0)
    job.tracker.log_artifact(target)
    return job.complete({"videos": len(scored), "failed": failed, "output": str(target),
                         "mean_Overall": float(scored["Overall"].mean())})
