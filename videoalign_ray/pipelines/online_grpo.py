"""``jobs/online_grpo.py``: Flow-GRPO on the colocated worker group (Liu et al. 2025, arXiv 2505.05470).

One group of workers (one per GPU, placed once) holds the policy for the whole job; each round they sample K
videos per prompt with SDE steps in a window (Flow-GRPO-Fast), the ground-truth reward of the synthetic world
(or VideoReward served by Ray Serve) scores them (weighted VQ/MQ/TA), advantages are normalised per prompt, and the same workers take the clipped
policy-gradient steps. Rerunning the same command resumes after the newest finished round.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from videoalign_ray.flow.objectives.grpo import GRPOSection
from videoalign_ray.runtime.job import job_run
from videoalign_ray.sections import ModelSection, RewardSection, RuntimeSection, WorldSection, parse_weights

log = logging.getLogger(__name__)


class OnlineGRPOConfig(RuntimeSection, ModelSection, WorldSection, RewardSection, GRPOSection):
    """Config of ``jobs/online_grpo.py``."""

    output_dir: str = Field("outputs/online_grpo", description="samples/, rounds/ (policy and optimizer per "
                            "round), MLflow store.")
    preset: Literal["tiny", "tiny-world", "wan2.1-1.3b"] = Field(
        "tiny-world", description="Generator preset (default: the tiny base pre-trained on the synthetic world, "
        "whose ground truth is the default reward); wan2.1-1.3b needs --model-path and, for prompts outside the "
        "world, a served reward.")
    prompts: str | None = Field(None, description="Text file (one prompt per line) or a table; default: the "
                                "synthetic world's train prompts. Rejected prompts go to rejects.csv.")
    prompt_column: str = Field("prompt", description="Column of a --prompts table.")
    rounds: int = Field(4, ge=1, description="Rounds of sample -> reward -> advantage -> train.")
    prompts_per_round: int = Field(8, ge=1, description="Prompt groups per round, drawn from the prompts.")
    samples_per_prompt: int = Field(4, ge=2, description="K samples per prompt (the group of the advantage).")
    num_workers: int = Field(2, ge=1, description="Colocated workers (one GPU each on a GPU cluster): each samples "
                             "and trains.")
    sample_steps: int = Field(8, ge=2, description="Denoising steps per sample.")
    sample_shift: float = Field(1.0, gt=0, description="Timestep shift of the sampling schedule.")
    sde_window: int = Field(2, ge=1, description="SDE steps per sample, the only steps trained on (Flow-GRPO-Fast); "
                            ">= sample-steps - 1: every step (Flow-GRPO).")
    sde_window_start: int | None = Field(None, ge=0, description="First SDE step; default: drawn per round.")
    updates_per_round: int = Field(2, ge=1, description="Optimizer steps per round (the first exactly on-policy).")
    micro_batch: int | None = Field(None, ge=1, description="Samples per forward in training; default: "
                                    "--samples-per-prompt, the sampling batch (the first update's importance ratios "
                                    "are then exactly 1: the same forward, bit for bit).")
    lr: float = Field(3e-4, gt=0, description="AdamW learning rate of the LoRA.")
    lora_rank: int = Field(8, gt=0)
    grad_clip: float = Field(1.0, gt=0)
    eval_samples_per_prompt: int = Field(2, ge=0, description="Held-out samples per world prompt: the final policy "
                                         "vs the base by ground truth, after the workers are released (0: off).")
    start_timeout_s: float = Field(600.0, gt=0, description="Seconds for the worker group to be placed and loaded.")
    sample_timeout_s: float = Field(1800.0, gt=0, description="Seconds one round's sampling may take.")
    train_timeout_s: float = Field(1800.0, gt=0, description="Seconds one round's training may take.")
    worker_restarts: int = Field(2, ge=0, description="Times per job the worker group is restarted (from the newest "
                                 "finished round) after a worker died, before the job fails.")
    fail_worker_on: int | None = Field(None, json_schema_extra={"test_hook": True},
                                       description="Test hook: a worker exits at the start of this round, once.")
    fail_at_round: int | None = Field(None, json_schema_extra={"test_hook": True},
                                      description="Test hook: the driver exits after this round's samples and advantages.")


def run_online_grpo(cfg: OnlineGRPOConfig) -> dict:
    """Run (or resume) every round; returns the summary (also ``<output_dir>/summary.json``).

    Raises:
        TimeoutError: the worker group was not placed or a round did not finish in time (names which).
    """
    with job_run(cfg, start_ray=True) as job:
        return _run(cfg, job)


def _run(cfg: OnlineGRPOConfig, job) -> dict:
    from dataclasses import asdict

    import numpy as np

    from videoalign_ray.data.io import write_rejects
    from videoalign_ray.flow.model import PRESETS, resolve_model_dir, text_tokenizer
    from videoalign_ray.flow.objectives.grpo import group_advantages
    from videoalign_ray.flow.objectives.registry import get_objective
    from videoalign_ray.online.colocated import WorkerGroup
    from videoalign_ray.online.colocated_rounds import RoundPlan, run_rounds
    from videoalign_ray.online.policy_worker import PolicySpec
    from videoalign_ray.online.prompts import load_online_prompts
    from videoalign_ray.online.rewards import RewardSource
    from videoalign_ray.online.selection import weighted_reward
    from videoalign_ray.pipelines.model_card import base_model_name
    from videoalign_ray.runtime.placement import use_gpu_default
    from videoalign_ray.synthetic.world import split_scenes

    preset = PRESETS[cfg.preset]
    model_dir = resolve_model_dir(cfg.preset, cfg.model_path, job.out, cfg.seed, cfg.world)
    held = split_scenes(seed=cfg.seed, world=cfg.world)[1]
    weights = parse_weights(cfg.reward_weights)
    use_gpu = use_gpu_default(None)
    rewards = RewardSource.of(cfg, job.out / "samples", use_gpu)
    rewards.gpus = cfg.reward_gpu_share
    tok = text_tokenizer(model_dir)
    prompts, rejects, scenes = load_online_prompts(
        cfg.prompts, cfg.prompt_column, count_tokens=lambda p: len(tok(p).input_ids),
        max_tokens=preset.max_text_tokens, world=cfg.world, seed=cfg.seed, ground_truth=rewards.kind == "ground-truth")
    job.tracker.log_artifact(write_rejects(job.out / "rejects.csv", rejects))
    spec = PolicySpec(
        model_dir=str(model_dir), samples_dir=str(job.out / "samples"), max_text_tokens=preset.max_text_tokens,
        num_frames=cfg.num_frames or preset.num_frames, height=cfg.height or preset.height,
        width=cfg.width or preset.width, fps=preset.fps, objective="grpo",
        objective_args=get_objective("grpo").args(cfg), sample_steps=cfg.sample_steps, sample_shift=cfg.sample_shift,
        lora_rank=cfg.lora_rank, lora_alpha=2.0 * cfg.lora_rank, lr=cfg.lr, grad_clip=cfg.grad_clip,
        micro_batch=cfg.micro_batch or cfg.samples_per_prompt, seed=cfg.seed, fail_on_round=cfg.fail_worker_on,
        fault_marker=str(job.out / ".worker_fault"))

    def reward(r, records):
        return rewards.score(records)

    def select(r, records, rewards):
        import torch

        weighted = np.stack([weighted_reward(g, weights) for g in rewards])  # (G, K)
        adv = group_advantages(torch.as_tensor(weighted)).numpy()
        items = {rec["prompt_index"]: [float(a) for a in adv[g]] for g, rec in enumerate(records)}
        return items, {"reward_mean": float(weighted.mean()), "reward_std": float(weighted.std())}

    plan = RoundPlan(
        prompts=tuple(prompts), prompts_per_round=cfg.prompts_per_round,
        samples_per_prompt=cfg.samples_per_prompt, sample_steps=cfg.sample_steps, sde_window=cfg.sde_window,
        sde_window_start=cfg.sde_window_start, updates=cfg.updates_per_round, seed=cfg.seed, reward=reward,
        select=select,
        scenes={p: asdict(s) for p, s in scenes.items()} if rewards.kind == "ground-truth" else {},
        sample_timeout_s=cfg.sample_timeout_s, train_timeout_s=cfg.train_timeout_s, fail_at_round=cfg.fail_at_round)
    group = WorkerGroup(spec, size=cfg.num_workers, use_gpu=use_gpu, start_timeout_s=cfg.start_timeout_s,
                        gpu_per_worker=1.0 - cfg.reward_gpu_share if rewards.kind == "served" else 1.0)
    done = run_rounds(group, plan, job.out, cfg.rounds, tracker=job.tracker,
                      base_model=base_model_name(cfg.preset, cfg.model_path), restarts=cfg.worker_restarts,
                      on_close=rewards.close)
    history, start = done["history"], done["resumed_after_round"]
    world_base = cfg.preset == "tiny-world"  # the held-out world prompts judge a generator trained on the world
    heldout = _evaluate(cfg, model_dir, history[-1]["policy"], held, preset, use_gpu) if history and world_base else None
    summary = {"rounds": history, "resumed_after_round": start, "final_policy": history[-1]["policy"], "reward": rewards.kind,
               "workers": done["workers"], "placement": "colocated", "heldout": heldout, "prompts": len(prompts),
               "prompt_rejects": len(rejects), "rejects_csv": str(job.out / "rejects.csv"),
               "gpu_idle_share": [h["gpu_idle_share"] for h in history],
               "worker_group_starts": done["worker_group_starts"], "rounds_run": len(history) - start}
    return job.complete(summary)


def _evaluate(cfg: OnlineGRPOConfig, model_dir, policy: str, held, preset, use_gpu: bool) -> dict | None:
    """The final policy vs the base on the world's held-out prompts (ground truth, shared seeds, ODE sampling)."""
    from videoalign_ray.synthetic.evaluate import Generator, compare_generators_remote

    if cfg.eval_samples_per_prompt == 0:
        return None
    res = compare_generators_remote(
        Generator(str(model_dir), policy), Generator(str(model_dir)), held, use_gpu=use_gpu,
        samples_per_prompt=cfg.eval_samples_per_prompt, seed=cfg.seed + 7, num_frames=cfg.num_frames or preset.num_frames,
        height=cfg.height or preset.height, width=cfg.width or preset.width, max_text_tokens=preset.max_text_tokens,
        steps=cfg.sample_steps, shift=cfg.sample_shift)
    return {k: res[k] for k in ("n", "win_rate", "policy_mean", "reference_mean", "worker")}
