"""``jobs/online_dpo.py`` in the colocated placement: the online Flow-DPO loop on one worker group.

Wiring only: the workers (:mod:`videoalign_ray.online.policy_worker`) sample K videos per prompt with the current
policy (Euler), the reward (ground truth, or the Serve app with a share of each GPU) scores them, the pair rule
selects chosen/rejected pairs, the round's pairs are committed to the pair store (as in the separate placement:
``jobs/flow_dpo.py --data <output-dir>/pairs`` retrains on them), and the same workers take ``--steps-per-round``
Flow-DPO steps on the pairs they sampled. Rounds, resume and GPU accounting: :mod:`videoalign_ray.online.colocated_rounds`.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def run_colocated(cfg, job) -> dict:
    """Run (or resume) every round of ``cfg`` (an ``OnlineDPOConfig``) in ``job``; returns the summary."""
    from dataclasses import asdict

    import numpy as np

    from videoalign_ray.data.io import write_rejects
    from videoalign_ray.flow.objectives.registry import get_objective
    from videoalign_ray.online.colocated import WorkerGroup
    from videoalign_ray.online.colocated_rounds import RoundPlan, run_rounds
    from videoalign_ray.online.policy_worker import PolicySpec
    from videoalign_ray.online.selection import round_table, weighted_reward
    from videoalign_ray.online.separate_rounds import reward_stats
    from videoalign_ray.online.store import PairStore
    from videoalign_ray.pipelines.model_card import base_model_name
    from videoalign_ray.pipelines.online_dpo_separate import online_runner
    from videoalign_ray.sections import parse_weights

    runner = online_runner(cfg, job)  # prompts, reward (ground truth or the Serve app), the latent-cache spec
    runner.rewards.gpus = cfg.reward_gpu_share
    prompts, rejects = runner.load_prompts()
    job.tracker.log_artifact(write_rejects(job.out / "rejects.csv", rejects))
    store, weights = PairStore(job.out / "pairs"), parse_weights(cfg.reward_weights)
    enc = runner.spec.encode
    spec = PolicySpec(
        model_dir=str(runner.model_dir), samples_dir=str(runner.samples_dir), max_text_tokens=enc.max_text_tokens,
        num_frames=enc.num_frames, height=enc.height, width=enc.width, fps=runner.preset.fps, objective="dpo",
        objective_args=get_objective("dpo").args(cfg), sample_steps=cfg.sample_steps,
        sample_shift=cfg.sample_shift or 1.0, lora_rank=cfg.lora_rank, lora_alpha=2.0 * cfg.lora_rank, lr=cfg.lr,
        micro_batch=cfg.batch_size, seed=cfg.seed, encode=enc,
        fail_on_round=int(cfg.fail_generator_on.split(",")[0]) if cfg.fail_generator_on else None,
        fault_marker=str(job.out / ".generator_fault"))

    def reward(r, records):
        return runner.score(r, records)

    def select(r, records, rewards):
        table, counts = round_table(records, rewards.tolist(), r, weights=weights, pair_rule=cfg.pair_rule,
                                    min_margin=cfg.min_margin)
        stats = reward_stats(records, rewards.tolist())
        store.commit(r, table, {"policy_version": r - 1, **counts, **stats})
        index = {s["path"]: s["sample"] for rec in records for s in rec["samples"]}
        items: dict[int, list] = {}
        for row in table.itertuples():
            items.setdefault(int(row.prompt_index), []).append((index[row.chosen], index[row.rejected]))
        weighted = np.stack([weighted_reward(g, weights) for g in rewards])
        log.info("round %d: %d pairs from %d prompts (%d ties, %d below margin)", r, counts["pairs"],
                 counts["groups"], counts["ties"], counts["below_margin"])
        return items, {"pairs": counts["pairs"], "ties": counts["ties"], "below_margin": counts["below_margin"],
                       "reward_mean": float(weighted.mean()), "reward_std": float(weighted.std()),
                       "reward_stats": stats}

    scenes = {p: asdict(s) for p, s in runner.scenes.items()} if runner.reward_kind == "ground-truth" else {}
    plan = RoundPlan(
        prompts=tuple(prompts), prompts_per_round=cfg.prompts_per_round or len(prompts), samples_per_prompt=cfg.samples_per_prompt,
        sample_steps=cfg.sample_steps, sde_window=0, sde_window_start=None, updates=cfg.steps_per_round,
        seed=cfg.seed, reward=reward, select=select, scenes=scenes, sample_timeout_s=cfg.group_timeout_s,
        train_timeout_s=cfg.train_timeout_s, fail_at_round=cfg.fail_at_round)
    group = WorkerGroup(spec, size=cfg.num_workers, use_gpu=runner.use_gpu, start_timeout_s=cfg.actor_start_timeout_s,
                        gpu_per_worker=1.0 - cfg.reward_gpu_share if runner.reward_kind == "served" else 1.0)
    done = run_rounds(group, plan, job.out, cfg.rounds, tracker=job.tracker,
                      base_model=base_model_name(cfg.preset, cfg.model_path), on_close=runner.close,
                      restarts=cfg.generator_replacements)
    history = done["history"]
    heldout = _evaluate(cfg, runner, history[-1]["policy"]) if history and cfg.eval_samples_per_prompt else None
    summary = {"rounds": history, "pairs_dir": str(store.root), "prompts": len(prompts),
               "prompt_rejects": len(rejects), "rejects_csv": str(job.out / "rejects.csv"),
               "final_policy": history[-1]["policy"], "reward": runner.reward_kind, "placement": "colocated",
               "workers": done["workers"], "resumed_after_round": done["resumed_after_round"], "heldout": heldout,
               "worker_group_starts": done["worker_group_starts"], "gpu_idle_share": [h["gpu_idle_share"] for h in history]}
    return job.complete(summary)


def _evaluate(cfg, runner, policy: str) -> dict:
    """The final policy vs the base on the world's held-out prompts, after the group has left its GPUs."""
    from videoalign_ray.synthetic.evaluate import Generator, compare_generators_remote
    from videoalign_ray.synthetic.world import split_scenes

    enc = runner.spec.encode
    res = compare_generators_remote(
        Generator(str(runner.model_dir), policy), Generator(str(runner.model_dir)),
        split_scenes(seed=cfg.seed, world=cfg.world)[1],
        use_gpu=runner.use_gpu, samples_per_prompt=cfg.eval_samples_per_prompt, seed=cfg.seed + 7,
        num_frames=enc.num_frames, height=enc.height, width=enc.width, max_text_tokens=enc.max_text_tokens,
        steps=cfg.sample_steps, shift=cfg.sample_shift or 1.0)
    return {k: res[k] for k in ("n", "win_rate", "policy_mean", "reference_mean", "worker")}
