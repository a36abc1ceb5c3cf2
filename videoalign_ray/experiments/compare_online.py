"""``jobs/compare_online.py``: Flow-GRPO vs the online Flow-DPO loop vs offline Flow-DPO, from the same base, at
the same number of generated (or rendered) videos, judged by the synthetic world's ground truth.

For each seed: Flow-GRPO (``jobs/online_grpo.py``) and online Flow-DPO (``jobs/online_dpo.py``, colocated) run
``rounds`` rounds of ``prompts_per_round`` train prompts (default all) with K samples (``rounds x prompts x K``
videos each), with the
ground-truth reward weighted on ``dimension`` only; offline Flow-DPO trains on ``rounds x prompts x K / 2``
rendered pairs labelled on ``dimension`` (as many videos) for as many optimizer steps as the online loop. The
three final policies are then compared with each other and with the base on the held-out prompts (same seeds,
ODE sampling; each generator sampled once, every pair compared on the same samples): win rates with 95% bootstrap
intervals over prompts per dimension, so VQ kept or lost shows too. ``--world large`` (48 held-out prompts instead
of 8) narrows those intervals.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field

from videoalign_ray.data.schema import DIMENSIONS
from videoalign_ray.runtime.fileio import write_text_atomic
from videoalign_ray.runtime.job import job_run
from videoalign_ray.sections import RuntimeSection, WorldSection

METHODS = ("grpo", "online_dpo", "offline_dpo")
NAMES = {"grpo": "Flow-GRPO", "online_dpo": "online Flow-DPO", "offline_dpo": "offline Flow-DPO", "base": "base"}


class CompareOnlineConfig(RuntimeSection, WorldSection):
    """Config of ``jobs/compare_online.py``."""

    output_dir: str = "outputs/compare_online"
    dimension: Literal["VQ", "MQ", "TA"] = Field("TA", description="The dimension the reward (and labels) weigh.")
    seeds: str = Field("0,1", description="Comma-separated seeds; every method runs once per seed.")
    rounds: int = Field(4, ge=1, description="Online rounds (sets the video budget of every method).")
    samples_per_prompt: int = Field(4, ge=2, description="K samples per prompt and round.")
    prompts_per_round: int | None = Field(None, ge=1, description="Train prompts drawn per online round; default "
                                          "all (classic world: 24).")
    steps_per_round: int = Field(20, ge=1, description="Flow-DPO steps per round (offline: rounds x this).")
    grpo_updates_per_round: int = Field(2, ge=1, description="Flow-GRPO optimizer steps per round.")
    sample_steps: int = Field(8, ge=2)
    num_workers: int = Field(2, ge=1)
    lr: float = Field(5e-4, gt=0, description="LoRA learning rate of every method.")
    eval_samples_per_prompt: int = Field(8, ge=1, description="Held-out samples per prompt in each comparison.")


def run_compare_online(cfg: CompareOnlineConfig) -> dict:
    """Run every method for every seed, then the pairwise held-out comparisons; returns the summary with a table."""
    with job_run(cfg, track=False, start_ray=True) as job:
        return _run(cfg, job)


def _run(cfg: CompareOnlineConfig, job) -> dict:
    from videoalign_ray.config import validate_config
    from videoalign_ray.flow.model import PRESETS, resolve_model_dir
    from videoalign_ray.pipelines.flow_dpo import FlowDPOConfig, run_flow_job
    from videoalign_ray.pipelines.online_dpo import OnlineDPOConfig, run_online_dpo
    from videoalign_ray.pipelines.online_grpo import OnlineGRPOConfig, run_online_grpo
    from videoalign_ray.runtime.placement import use_gpu_default
    from videoalign_ray.synthetic.evaluate import (
        Generator,
        paired_comparison,
        prompts_for_half_width,
        score_generators_remote,
    )
    from videoalign_ray.synthetic.world import make_preference_dataset, split_scenes

    out, preset = job.out, PRESETS["tiny-world"]
    model_dir = resolve_model_dir("tiny-world", None, out, world=cfg.world)
    weights = ",".join("1" if d == cfg.dimension else "0" for d in DIMENSIONS)
    results: dict = {}
    for seed in [int(s) for s in cfg.seeds.split(",") if s.strip()]:
        train, held = split_scenes(seed=0, world=cfg.world)  # one split for every seed: seeds vary training only
        # the online jobs get the train prompts as a file: by default they would draw their own split from `seed`
        prompts_file = out / "train_prompts.txt"
        write_text_atomic(prompts_file, "".join(s.prompt + "\n" for s in train))
        per_round = min(cfg.prompts_per_round or len(train), len(train))
        common = dict(preset="tiny-world", model_path=str(model_dir), world=cfg.world, prompts=str(prompts_file),
                      seed=seed, lr=cfg.lr, lora_rank=8,
                      sample_steps=cfg.sample_steps, num_workers=cfg.num_workers, eval_samples_per_prompt=0,
                      reward_weights=weights, mlflow_tracking_uri=cfg.mlflow_tracking_uri)
        base = out / f"seed{seed}"
        grpo = run_online_grpo(validate_config(OnlineGRPOConfig, dict(
            common, output_dir=str(base / "grpo"), rounds=cfg.rounds, prompts_per_round=per_round,
            samples_per_prompt=cfg.samples_per_prompt, updates_per_round=cfg.grpo_updates_per_round)))
        dpo = run_online_dpo(validate_config(OnlineDPOConfig, dict(
            common, output_dir=str(base / "online_dpo"), rounds=cfg.rounds, samples_per_prompt=cfg.samples_per_prompt,
            steps_per_round=cfg.steps_per_round, batch_size=2, placement="colocated",
            prompts_per_round=per_round)))
        videos = cfg.rounds * per_round * cfg.samples_per_prompt
        data = make_preference_dataset(base / "offline_data", num_pairs=videos // 2, scenes=train, seed=seed,
                                       name="train")
        offline = run_flow_job(validate_config(FlowDPOConfig, dict(
            data=str(data), dimension=cfg.dimension, output_dir=str(base / "offline_dpo"), preset="tiny-world",
            model_path=str(model_dir), max_steps=cfg.rounds * cfg.steps_per_round, batch_size=2,
            num_workers=cfg.num_workers, lr=cfg.lr, lora_rank=8, seed=seed, checkpoint_every=cfg.rounds * cfg.steps_per_round,
            num_samples=0, cache_dir=str(out / "cache"), mlflow_tracking_uri=cfg.mlflow_tracking_uri)))
        policies = {"grpo": grpo["final_policy"], "online_dpo": dpo["final_policy"], "offline_dpo": offline["checkpoint"]}
        gens = {k: Generator(str(model_dir), v) for k, v in policies.items()} | {"base": Generator(str(model_dir))}
        rows = score_generators_remote(
            gens, held, use_gpu=use_gpu_default(None), samples_per_prompt=cfg.eval_samples_per_prompt,
            seed=seed + 7, num_frames=preset.num_frames, height=preset.height, width=preset.width,
            max_text_tokens=preset.max_text_tokens, steps=cfg.sample_steps)
        comparisons = {}
        for a, b in (("grpo", "online_dpo"), ("grpo", "offline_dpo"), ("online_dpo", "offline_dpo"),
                     ("grpo", "base"), ("online_dpo", "base"), ("offline_dpo", "base")):
            res = paired_comparison(rows[a], rows[b])
            comparisons[f"{a} vs {b}"] = {
                "win_rate": res["win_rate"], "a_mean": res["policy_mean"], "b_mean": res["reference_mean"],
                "n": res["n"], "prompts": res["prompts"], "prompt_sd": res["prompt_sd"],
                "prompts_for_0.1": {d: prompts_for_half_width(res["prompt_sd"][d]) for d in DIMENSIONS}}
        results[seed] = {"videos": videos, "heldout_prompts": len(held), "policies": policies,
                         "comparisons": comparisons}
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))
    return job.complete({"table": "\n" + comparison_table(results, cfg.dimension),
                         "resolution": "\n" + resolution_table(results, cfg.dimension),
                         "results_json": str(out / "results.json")})


def resolution_table(results: dict, dimension: str) -> str:
    """Markdown: per seed and pair, on ``dimension``, the held-out prompts used, the 95% interval's half-width,
    the per-prompt win-rate sd and the prompts a +-0.1 interval would need at that sd."""
    lines = [f"| seed | A vs B | held-out prompts | {dimension} half-width | per-prompt sd | prompts for +-0.1 |",
             "|---|---|---|---|---|---|"]
    for seed, r in results.items():
        for name, c in r["comparisons"].items():
            a, b = name.split(" vs ")
            _, lo, hi = c["win_rate"][dimension]
            lines.append(f"| {seed} | {NAMES[a]} vs {NAMES[b]} | {c['prompts']} | {(hi - lo) / 2:.3f} "
                         f"| {c['prompt_sd'][dimension]:.3f} | {c['prompts_for_0.1'][dimension]} |")
    return "\n".join(lines)


def comparison_table(results: dict, dimension: str) -> str:
    """Markdown: per seed and pair of methods, held-out ground-truth win rate [95% CI over prompts] per dimension
    and the two sides' mean scores on ``dimension`` and VQ."""
    lines = [f"| seed | A vs B (reward on {dimension}) | win VQ | win MQ | win TA | A / B {dimension} | A / B VQ |",
             "|---|---|---|---|---|---|---|"]
    for seed, r in results.items():
        for name, c in r["comparisons"].items():
            a, b = name.split(" vs ")
            cells = [f"{c['win_rate'][d][0]:.2f} [{c['win_rate'][d][1]:.2f}, {c['win_rate'][d][2]:.2f}]"
                     for d in DIMENSIONS]
            lines.append(f"| {seed} | {NAMES[a]} vs {NAMES[b]} | " + " | ".join(cells)
                         + f" | {c['a_mean'][dimension]:.3f} / {c['b_mean'][dimension]:.3f}"
                         + f" | {c['a_mean']['VQ']:.3f} / {c['b_mean']['VQ']:.3f} |")
    return "\n".join(lines)
