"""The online Flow-DPO loop in the separate placement: the phases of one round (generate, score, select, store,
train, sync, evaluate) and their state; also the online DPO job's shared context (prompts, reward source, the
latent encoding spec), which the colocated placement reuses.

Ray glue: the generation actors (:mod:`videoalign_ray.online.generator_pool`), the reward app's handle and the
per-round training run, which the job supplies (:class:`RoundTrainer`: the Flow-DPO job, a Ray Train + DeepSpeed
run, wired in :mod:`videoalign_ray.pipelines.online_dpo_separate`). What each phase leaves on disk is what a rerun reuses.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from videoalign_ray.data.schema import DIMENSIONS
from videoalign_ray.online.rewards import RewardSource
from videoalign_ray.online.store import round_dir_name
from videoalign_ray.runtime.fileio import write_text_atomic

log = logging.getLogger(__name__)


class RoundTrainer(Protocol):
    """What a round's training is to the runner (the job wires the Flow-DPO job in)."""

    def encode_spec(self) -> Any:
        """The :class:`~videoalign_ray.flow.pipeline.EncodeSpec` the rounds' training reads latents with (the
        generated videos are cached under the same keys)."""

    def fit(self, r: int, data: Path, init: Path | None) -> tuple[Path, dict]:
        """Train round ``r`` on the pairs table ``data`` from the policy ``init`` (None: the base); returns the
        new policy folder (with ``adapter/``) and the run's summary (``mlflow_run_id``)."""


class RoundRunner:
    """Runs rounds for one online DPO config (``pipelines.online_dpo.OnlineDPOConfig``) and job;
    ``make_trainer(runner)`` builds its :class:`RoundTrainer` once the runner knows its model folder."""

    def __init__(self, cfg, job, make_trainer: Callable[[RoundRunner], RoundTrainer]):
        from videoalign_ray.flow.model import PRESETS, resolve_model_dir
        from videoalign_ray.flow.sampling import SamplingSettings
        from videoalign_ray.online.generation import GeneratorSpec
        from videoalign_ray.runtime.placement import use_gpu_default

        self.cfg, self.job, self.out, self.tracker = cfg, job, job.out, job.tracker
        self.preset = PRESETS[cfg.preset]
        self.model_dir = resolve_model_dir(cfg.preset, cfg.model_path, self.out, cfg.seed, cfg.world)
        self.use_gpu = use_gpu_default(None)
        self.samples_dir = self.out / "samples"
        self.rewards = RewardSource.of(cfg, self.samples_dir, self.use_gpu)
        self.reward_kind = self.rewards.kind
        self.trainer = make_trainer(self)
        espec = self.trainer.encode_spec()
        self.spec = GeneratorSpec(
            encode=espec, fps=self.preset.fps, sampling=SamplingSettings.of(cfg),
            guidance_scale=cfg.guidance_scale, weights=cfg.guide_weights, reward_endpoint=cfg.reward_endpoint,
            guide_first_half=cfg.pair_rule == "guided-vs-unguided")
        self.pool = None
        self.policy: Path | None = None  # None: the base (version 0)
        self.policy_ref = None

    # ---- prompts ---------------------------------------------------------------------------------
    def load_prompts(self):
        """(prompts, rejects) of ``--prompts`` or the world's train prompts (``online.prompts.load_online_prompts``);
        sets ``scenes`` (world prompt -> Scene)."""
        from videoalign_ray.flow.model import text_tokenizer
        from videoalign_ray.online.prompts import load_online_prompts

        cfg = self.cfg
        tok = text_tokenizer(self.model_dir)
        prompts, rejects, self.scenes = load_online_prompts(
            cfg.prompts, cfg.prompt_column, count_tokens=lambda p: len(tok(p).input_ids),
            max_tokens=self.preset.max_text_tokens, world=cfg.world, seed=cfg.seed,
            ground_truth=self.reward_kind == "ground-truth")
        return prompts, rejects

    # ---- one round -------------------------------------------------------------------------------
    def run_round(self, r: int, prompts: list[str], store) -> dict:
        from videoalign_ray.online.selection import round_table
        from videoalign_ray.sections import parse_weights

        rdir = self.out / "rounds" / round_dir_name(r)
        done = load_round_summary(rdir / "summary.json")
        if done is not None:
            log.info("round %d: done earlier (policy %s), skipped", r, done["policy"])
            self.policy, self.policy_ref = Path(done["policy"]), None
            return done
        seconds: dict[str, float] = {}
        committed = store.committed().get(r)
        if committed is None:
            t = time.monotonic()
            records = self.generate(r, r - 1, prompts)
            seconds["generate"] = time.monotonic() - t
            t = time.monotonic()
            rewards = self.score(r, records)
            seconds["score"] = time.monotonic() - t
            t = time.monotonic()
            table, counts = round_table(records, rewards, r, weights=parse_weights(self.cfg.reward_weights),
                                        pair_rule=self.cfg.pair_rule, min_margin=self.cfg.min_margin)
            stats = reward_stats(records, rewards)
            seconds["select"] = time.monotonic() - t
            t = time.monotonic()
            store.commit(r, table, {"policy_version": r - 1, **counts, **stats})
            seconds["store"] = time.monotonic() - t
            committed = store.committed()[r]
            log.info("round %d: %d pairs from %d prompts (%d ties, %d below margin)", r, counts["pairs"],
                     counts["groups"], counts["ties"], counts["below_margin"])
        t = time.monotonic()
        policy, train_summary = self.train(r, store)
        seconds["train"] = time.monotonic() - t
        t = time.monotonic()
        sync = self.sync(r, policy)
        seconds["sync"] = time.monotonic() - t
        t = time.monotonic()
        heldout = self.evaluate(r, policy, rdir)
        seconds["evaluate"] = time.monotonic() - t
        summary = {"round": r, "policy": str(policy) if policy else None, "policy_version": r,
                   "pairs": committed["pairs"], "ties": committed["ties"], "below_margin": committed["below_margin"],
                   "reward_stats": {k: v for k, v in committed.items() if k.startswith(("reward_", "gt_"))},
                   "seconds": seconds, "sync": sync, "heldout": heldout,
                   "train_run_id": train_summary.get("mlflow_run_id") if train_summary else None}
        metrics = {**summary["reward_stats"], "pairs": summary["pairs"], "ties": summary["ties"],
                   "below_margin": summary["below_margin"], **{f"seconds_{k}": v for k, v in seconds.items()},
                   **{f"sync_{k}": v for k, v in sync.items()}}
        for d, (rate, lo, hi) in (heldout or {}).get("win_rate", {}).items():
            metrics.update({f"heldout_win_{d}": rate, f"heldout_win_{d}_lo": lo, f"heldout_win_{d}_hi": hi})
        for d, v in (heldout or {}).get("policy_mean", {}).items():
            metrics[f"heldout_gt_{d}"] = v
        self.tracker.log_metrics(metrics, step=r)
        write_text_atomic(rdir / "summary.json", json.dumps(summary, indent=2))
        return summary

    # ---- generate --------------------------------------------------------------------------------
    def generate(self, r: int, version: int, prompts: list[str]) -> list[dict]:
        """Every prompt group of round ``r`` sampled with policy ``version`` (finished groups reused)."""
        from dataclasses import asdict

        from videoalign_ray.online.generation import group_record_path, load_group_record
        from videoalign_ray.online.selection import sample_seed

        records, todo = [None] * len(prompts), []
        k_seeds = self.cfg.samples_per_prompt // (2 if self.spec.guide_first_half else 1)  # twins share seeds
        for i, prompt in enumerate(prompts):
            seeds = [sample_seed(self.cfg.seed, r, i, k % k_seeds) for k in range(self.cfg.samples_per_prompt)]
            records[i] = load_group_record(group_record_path(self.samples_dir, r, i), version, seeds)
            if records[i] is None:
                scene = self.scenes.get(prompt)
                todo.append({"round": r, "prompt_index": i, "prompt": prompt, "seeds": seeds, "version": version,
                             "scene": asdict(scene) if scene else None})
        log.info("round %d: %d prompt groups to generate, %d reused", r, len(todo), len(prompts) - len(todo))
        if todo:
            done = self._pool().generate(todo, [self._policy_ref()], f"round {r} generation")
            for task, rec in zip(todo, done, strict=True):
                records[task["prompt_index"]] = rec
        return records

    def _pool(self):
        from videoalign_ray.online.generator_pool import GeneratorPool

        if self.pool is None:
            fail_on = tuple(int(x) for x in self.cfg.fail_generator_on.split(",")) if self.cfg.fail_generator_on else None
            self.pool = GeneratorPool(
                self.spec, str(self.samples_dir), size=self.cfg.generator_actors, use_gpu=self.use_gpu,
                start_timeout_s=self.cfg.actor_start_timeout_s, task_timeout_s=self.cfg.group_timeout_s,
                replacements=self.cfg.generator_replacements, fault_marker=str(self.out / ".generator_fault"),
                fail_on=fail_on)
        return self.pool

    def _policy_ref(self):
        """The object-store reference of the current policy (put once per version)."""
        import ray

        if self.policy is None:
            return None
        if self.policy_ref is None:
            self.policy_ref = ray.put(_policy_payload(self.policy))
        return self.policy_ref

    # ---- score -----------------------------------------------------------------------------------
    def score(self, r: int, records: list[dict]) -> list[list[list[float]]]:
        """``(groups, K, 3)`` rewards of round ``r``'s groups (:class:`~videoalign_ray.online.rewards.RewardSource`)."""
        return self.rewards.score(records)

    # ---- train, sync, evaluate ---------------------------------------------------------------------
    def train(self, r: int, store):
        """One training run on round ``r``'s pairs (plus ``replay_rounds`` earlier ones), from the current
        policy; returns (new policy folder, the run's summary). No pair at all: the policy stays."""
        from videoalign_ray.runtime.fileio import atomic_path

        rounds = [x for x in range(max(1, r - self.cfg.replay_rounds), r + 1) if x in store.committed()]
        table = store.read(rounds)
        if table.empty:
            log.warning("round %d: no pair kept (all ties or below margin); the policy is unchanged", r)
            return self.policy, None
        data = self.out / "rounds" / round_dir_name(r) / "train_pairs.parquet"
        with atomic_path(data) as tmp:
            table.to_parquet(tmp, index=False)
        return self.trainer.fit(r, data, self.policy)

    def sync(self, r: int, policy: Path | None) -> dict:
        """Put the new policy in the object store once and load it on every live actor (versioned)."""
        import ray

        self.policy, self.policy_ref = policy, None
        if policy is None or self.pool is None or self.pool.actors is None:
            return {}
        t = time.monotonic()
        payload = _policy_payload(policy)
        self.policy_ref = ray.put(payload)
        versions = self.pool.set_policy(r, self.policy_ref)
        if set(versions) != {r}:
            raise RuntimeError(f"weight sync: actors report versions {versions}, expected {r}")
        nbytes = sum(v.numel() * v.element_size() for v in payload["state"].values())
        return {"bytes": nbytes, "seconds": time.monotonic() - t, "actors": len(versions)}

    def evaluate(self, r: int, policy: Path | None, rdir: Path) -> dict | None:
        """Held-out world prompts: the policy vs the base by ground truth (same seeds), a grid image."""
        from videoalign_ray.synthetic.evaluate import Generator, compare_generators_remote
        from videoalign_ray.synthetic.world import split_scenes

        if self.cfg.eval_samples_per_prompt == 0 or policy is None:
            return None
        held = split_scenes(seed=self.cfg.seed, world=self.cfg.world)[1]
        res = compare_generators_remote(
            Generator(str(self.model_dir), str(policy)), Generator(str(self.model_dir)), held, use_gpu=self.use_gpu,
            samples_per_prompt=self.cfg.eval_samples_per_prompt, seed=self.cfg.seed + 7,
            num_frames=self.spec.encode.num_frames, height=self.spec.encode.height, width=self.spec.encode.width,
            max_text_tokens=self.spec.encode.max_text_tokens, steps=self.cfg.sample_steps, shift=self.cfg.sample_shift or 1.0,
            grid_path=rdir / "heldout_grid.png")
        self.tracker.log_artifact(rdir / "heldout_grid.png", f"round_{r:03d}")
        return {k: res[k] for k in ("n", "win_rate", "policy_mean", "reference_mean")}

    def close(self) -> None:
        """Stop the actors and the reward app this job deployed (an app given by name keeps running)."""
        if self.pool is not None:
            self.pool.close()
        self.rewards.close()


def _policy_payload(policy: Path) -> dict:
    """``{"state", "rank", "alpha"}`` of a LoRA run's ``final/adapter`` (safetensors)."""
    from videoalign_ray.flow.lora_export import read_adapter_state

    state, rank, alpha = read_adapter_state(Path(policy) / "adapter")
    return {"state": state, "rank": rank, "alpha": alpha}


def reward_stats(records: list[dict], rewards) -> dict:
    """Mean/std of the round's rewards per dimension, and of the ground truth where the samples have it."""
    import numpy as np

    r = np.asarray(rewards, np.float64).reshape(-1, 3)
    stats = {}
    for i, d in enumerate(DIMENSIONS):
        stats[f"reward_mean_{d}"], stats[f"reward_std_{d}"] = float(r[:, i].mean()), float(r[:, i].std())
    gt = [s["ground_truth"] for rec in records for s in rec["samples"] if "ground_truth" in s]
    if gt:
        for d in DIMENSIONS:
            stats[f"gt_mean_{d}"] = float(np.mean([g[d] for g in gt]))
    return stats


def load_round_summary(path: Path) -> dict | None:
    """A finished round's summary (``rounds/round=NNN/summary.json``) or None."""
    return json.loads(path.read_text()) if path.is_file() else None
