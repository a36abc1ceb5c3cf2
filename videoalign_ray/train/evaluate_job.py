"""``jobs/evaluate_generator.py``: ground-truth win rates of a trained generator against another on the
synthetic world's held-out prompts, logged to MLflow with a frame grid."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from videoalign_ray.config import RuntimeSection
from videoalign_ray.fileio import write_text_atomic


class EvaluateConfig(RuntimeSection):
    """Config of ``jobs/evaluate_generator.py``."""

    output_dir: str = "outputs/evaluate_generator"
    policy: str | None = Field(None, description="A job's final/ folder (adapter/ or model/); default: the base.")
    reference: str | None = Field(None, description="Another final/ folder; default: the base model itself.")
    model_path: str | None = Field(None, description="Base model folder; default: the tiny-world asset.")
    prompts: str = Field("heldout", description="heldout | train | all (synthetic-world prompt sets).")
    split_seed: int = Field(0, description="Seed of the train/held-out prompt split.")
    samples_per_prompt: int = Field(8, ge=1, description="Samples per prompt (shared seeds for both models).")
    sample_steps: int = Field(20, ge=1, description="Euler steps.")
    num_frames: int = 8
    height: int = 32
    width: int = 32


def run_evaluate(cfg: EvaluateConfig) -> dict:
    """Sample, score, print and log the comparison; returns a summary with the table."""
    from videoalign_ray.data.synthetic import all_scenes, split_scenes
    from videoalign_ray.flow.evaluate import Generator, compare_generators, format_table
    from videoalign_ray.flow.model import PRESETS, resolve_model_dir
    from videoalign_ray.tracking import Tracker, default_tracking_uri

    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model_dir = str(resolve_model_dir("tiny-world", cfg.model_path, out))
    train, held = split_scenes(seed=cfg.split_seed)
    scenes = {"heldout": held, "train": train, "all": all_scenes()}.get(cfg.prompts)
    if scenes is None:
        raise ValueError(f"prompts must be heldout, train or all, got {cfg.prompts!r}")
    result = compare_generators(
        Generator(model_dir, cfg.policy), Generator(model_dir, cfg.reference), scenes,
        samples_per_prompt=cfg.samples_per_prompt, seed=cfg.seed, num_frames=cfg.num_frames, height=cfg.height,
        width=cfg.width, max_text_tokens=PRESETS["tiny-world"].max_text_tokens, steps=cfg.sample_steps,
        grid_path=out / "grid.png",
    )
    table = format_table(result)
    print(table)
    write_text_atomic(out / "scores.json", json.dumps(result, indent=2))
    uri = default_tracking_uri(out, cfg.mlflow_tracking_uri)
    tracker, _ = Tracker.start_or_resume(out, uri, cfg.mlflow_experiment, cfg.run_name or out.name, cfg.to_flat_dict())
    metrics = {f"win_rate_{d}": v[0] for d, v in result["win_rate"].items()}
    metrics |= {f"policy_{d}": v for d, v in result["policy_mean"].items()}
    metrics |= {f"reference_{d}": v for d, v in result["reference_mean"].items()}
    tracker.log_metrics(metrics, step=0)
    for f in ("grid.png", "scores.json"):
        tracker.log_artifact(out / f)
    tracker.finish()
    return {"table": "\n" + table, "n": result["n"], "grid": str(out / "grid.png"),
            "mlflow_run_id": tracker.run_id, "mlflow_tracking_uri": uri}
