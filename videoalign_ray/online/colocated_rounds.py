"""Rounds of on-policy training on the colocated worker group: sample -> reward -> select -> train -> checkpoint,
for any objective with ``online_batches`` (Flow-GRPO: advantages; Flow-DPO: pairs), with resume and GPU accounting.

What a rerun reuses: a round whose ``rounds/round-NNN/summary.json`` exists is done; the workers load the
newest such round's ``policy/`` (LoRA adapter, safetensors) and ``optimizer.pt`` (AdamW state, loaded with
``weights_only=True``) and continue with the next round. A round cut short is redone from there: its prompt
groups, noise seeds, SDE window and SDE noise are functions of (seed, round, prompt), so the redone round draws
the same samples.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from videoalign_ray.runtime.fileio import atomic_dir, write_text_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundPlan:
    """How the driver runs a round (plain values).

    ``prompts``: the prompt pool; ``prompts_per_round`` of them per round (drawn with (seed, round)), each with
    ``samples_per_prompt`` samples. ``reward(r, records) -> (G, K, 3)`` (VQ, MQ, TA) rewards;
    ``select(r, records, rewards) -> (items, stats)``: per prompt index the workers' training items (advantages,
    pairs) and the round's numbers (``reward_mean``, pair counts, ...). ``sde_window`` SDE steps (0: ODE sampling;
    start drawn per round unless ``sde_window_start``), ``updates`` optimizer steps per round.
    ``scenes``: prompt -> world scene dict (ground truth) or absent. ``fail_at_round``: test hook, the driver
    exits hard after that round's samples are written and selected (pairs committed).
    """

    prompts: tuple[str, ...]
    prompts_per_round: int
    samples_per_prompt: int
    sample_steps: int
    sde_window: int
    sde_window_start: int | None
    updates: int
    seed: int
    reward: Callable
    select: Callable
    scenes: dict
    sample_timeout_s: float
    train_timeout_s: float
    fail_at_round: int | None = None


def round_dir(out: Path, r: int) -> Path:
    """``<out>/rounds/round-NNN``."""
    return out / "rounds" / f"round-{r:03d}"


def last_done_round(out: Path) -> int:
    """The newest round with a ``summary.json`` (0: none)."""
    done = [int(p.parent.name.split("-")[1]) for p in (out / "rounds").glob("round-*/summary.json")]
    return max(done, default=0)


def round_tasks(plan: RoundPlan, r: int) -> tuple[list[dict], tuple[int, ...]]:
    """Round ``r``'s prompt-group tasks (prompt indices drawn with (seed, r)) and SDE window."""
    import torch

    from videoalign_ray.flow.sde import sde_window
    from videoalign_ray.online.selection import sample_seed

    gen = torch.Generator().manual_seed(sample_seed(plan.seed, r, -1, -1))
    n = len(plan.prompts)
    picks = sorted(torch.randperm(n, generator=gen)[: min(plan.prompts_per_round, n)].tolist())
    window = sde_window(plan.sample_steps, plan.sde_window, plan.sde_window_start, gen) if plan.sde_window else ()
    tasks = [{"prompt_index": i, "prompt": plan.prompts[i], "scene": plan.scenes.get(plan.prompts[i]),
              "seeds": [sample_seed(plan.seed, r, i, k) for k in range(plan.samples_per_prompt)],
              "sde_seed": sample_seed(plan.seed, r, i, 1_000_000)} for i in picks]
    return tasks, window


class ColocatedRounds:
    """Runs rounds on a started :class:`~videoalign_ray.online.colocated.WorkerGroup` (see module docstring)."""

    def __init__(self, group, plan: RoundPlan, out: Path, tracker=None, base_model: str | None = None):
        self.group, self.plan, self.out, self.tracker, self.base_model = group, plan, out, tracker, base_model
        self._writer = None  # the thread writing the previous round's checkpoint while the workers go on

    def resume(self) -> int:
        """Load the newest finished round's policy and optimizer into every worker; returns that round (0: none)."""
        import torch

        from videoalign_ray.flow.lora_export import read_adapter_state

        r = last_done_round(self.out)
        if r == 0:
            return 0
        adapter, _, _ = read_adapter_state(round_dir(self.out, r) / "policy" / "adapter")
        optimizer = torch.load(round_dir(self.out, r) / "optimizer.pt", weights_only=True)
        self.group.broadcast("load_state", (r, adapter, optimizer), f"round {r} policy load", self.plan.train_timeout_s)
        log.info("resumed after round %d (policy %s)", r, round_dir(self.out, r) / "policy")
        return r

    def run_round(self, r: int) -> dict:
        """Sample, reward, advantage, train and checkpoint round ``r``; returns its summary."""
        import os

        plan, group = self.plan, self.group
        t0, reserved0 = time.monotonic(), group.reserved_s
        busy0 = sum(group.call("busy_seconds", [()] * group.size, "worker busy time", plan.sample_timeout_s))
        tasks, window = round_tasks(plan, r)
        shares = [tasks[w::group.size] for w in range(group.size)]
        seconds = {}
        t = time.monotonic()
        per_worker = group.call("sample", [(r, s, window) for s in shares], f"round {r} sampling", plan.sample_timeout_s)
        seconds["sample"] = time.monotonic() - t
        records = sorted((rec for recs in per_worker for rec in recs), key=lambda x: x["prompt_index"])
        t = time.monotonic()
        rewards = np.asarray(plan.reward(r, records), dtype=np.float64)  # (G, K, 3)
        seconds["reward"] = time.monotonic() - t
        t = time.monotonic()
        items, stats = plan.select(r, records, rewards)
        seconds["select"] = time.monotonic() - t
        if plan.fail_at_round == r:
            self.flush()
            log.warning("fail_at_round %d: the driver exits now, after sampling and selection (test hook)", r)
            os._exit(3)
        t = time.monotonic()
        metrics = group.call("train", [(r, {i: items[i] for i in (x["prompt_index"] for x in s) if i in items},
                                        plan.updates) for s in shares], f"round {r} training", plan.train_timeout_s)
        seconds["train"] = time.monotonic() - t
        state = group.call_first("state", (), f"round {r} policy state", plan.train_timeout_s)
        busy = sum(m["busy_s"] for m in metrics) - busy0
        reserved = group.reserved_s - reserved0
        summary = {"round": r, "prompts": len(tasks), "samples": int(rewards.shape[0] * rewards.shape[1]),
                   "sde_steps": list(window), **stats, "ground_truth_mean": _ground_truth_means(records),
                   "train": _mean_metrics(metrics),
                   "seconds": {**seconds, "round": time.monotonic() - t0},
                   "gpu_seconds_reserved": reserved, "gpu_seconds_busy": busy,
                   "gpu_idle_share": max(0.0, 1.0 - busy / reserved) if reserved > 0 else None,
                   "policy": str(round_dir(self.out, r) / "policy")}
        if self.tracker is not None:
            flat = {**{k: v for k, v in stats.items() if isinstance(v, (int, float))},
                    "gpu_idle_share": summary["gpu_idle_share"] or 0.0,
                    **{f"train_{k}": v for k, v in summary["train"].items()},
                    **{f"gt_mean_{d}": v for d, v in summary["ground_truth_mean"].items()},
                    **{f"seconds_{k}": v for k, v in seconds.items()}}
            self.tracker.log_metrics(flat, step=r)
        self.flush()  # the previous round's files first: summaries land in round order
        self._writer = threading.Thread(target=self._checkpoint, args=(r, state, summary), name=f"checkpoint-{r}")
        self._writer.start()
        log.info("round %d: reward %.4f +- %.4f, loss %.4g, gpu idle %.0f%%", r, stats.get("reward_mean", np.nan),
                 stats.get("reward_std", np.nan), summary["train"].get("loss", float("nan")),
                 100 * (summary["gpu_idle_share"] or 0))
        return summary

    def flush(self) -> None:
        """Wait for the checkpoint being written (a round is done once its ``summary.json`` exists).

        Raises:
            RuntimeError: the write failed (the round will be redone by a rerun).
        """
        if self._writer is not None:
            self._writer.join()
            self._writer = None
            if self._write_error is not None:
                raise RuntimeError(f"writing a round's checkpoint failed: {self._write_error}") from self._write_error

    _write_error: BaseException | None = None

    def _checkpoint(self, r: int, state: dict, summary: dict) -> None:
        """``round-NNN/policy/adapter/`` (peft LoRA, safetensors), ``optimizer.pt``, then ``summary.json``, each
        written atomically (on the writer thread: the workers sample the next round meanwhile)."""
        import torch

        from videoalign_ray.flow.lora_export import write_adapter
        from videoalign_ray.runtime.fileio import atomic_path

        try:
            spec = self.group.spec
            with atomic_dir(round_dir(self.out, r) / "policy") as tmp:
                write_adapter(state["adapter"], spec.lora_rank, spec.lora_alpha, tmp, base_model=self.base_model)
            with atomic_path(round_dir(self.out, r) / "optimizer.pt") as tmp:
                torch.save(state["optimizer"], tmp)
            write_text_atomic(round_dir(self.out, r) / "summary.json", json.dumps(summary, indent=2))
        except BaseException as exc:  # noqa: BLE001 - surfaced by flush() on the driver's thread
            self._write_error = exc


def run_rounds(group, plan: RoundPlan, out: Path, rounds: int, *, tracker=None, base_model: str | None = None,
               on_close: Callable | None = None, restarts: int = 2) -> dict:
    """Start ``group``, resume after the newest finished round, run the rest up to ``rounds``, wait for the last
    checkpoint, close the group (then ``on_close()``, also on failure).

    A worker that dies takes its process group with it: the whole group is closed, started again and loaded
    with the newest finished round, and the round is redone (the same samples: they are functions of seed,
    round and prompt), at most ``restarts`` times per job (a log line each).

    Returns ``{"workers": [worker info], "history": [round summaries 1..rounds], "resumed_after_round": int,
    "worker_group_starts": int}``.

    Raises:
        RuntimeError: a worker died after the group was restarted ``restarts`` times (names the round).
    """
    from ray.exceptions import RayActorError

    history, start, workers, starts = [], 0, [], 1
    try:
        workers = group.start()
        runner = ColocatedRounds(group, plan, out, tracker, base_model)
        start = runner.resume()
        history = [json.loads((round_dir(out, r) / "summary.json").read_text()) for r in range(1, start + 1)]
        r = start + 1
        while r <= rounds:
            try:
                history.append(runner.run_round(r))
                r += 1
            except RayActorError as exc:
                if starts > restarts:
                    raise RuntimeError(f"a colocated worker died in round {r} after {starts - 1} group restarts: "
                                       f"{type(exc).__name__}: {exc}") from exc
                log.warning("a colocated worker died in round %d (%s); restarting the worker group from the "
                            "newest finished round (restart %d of at most %d)", r, type(exc).__name__, starts, restarts)
                runner.flush()
                group.close()
                workers = group.start()
                starts += 1
                runner.resume()
        runner.flush()
    finally:
        group.close()
        if on_close is not None:
            on_close()
    return {"workers": workers, "history": history, "resumed_after_round": start, "worker_group_starts": starts}


def _mean_metrics(metrics: list[dict]) -> dict[str, float]:
    """Per key, the mean over the workers that report it (a worker with nothing to train reports no loss);
    ``micro_batches`` is the sum."""
    keys = sorted({k for m in metrics for k in m if k not in ("busy_s", "micro_batches")})
    out = {k: float(np.mean([m[k] for m in metrics if k in m])) for k in keys}
    out["micro_batches"] = float(sum(m.get("micro_batches", 0) for m in metrics))
    return out


def _ground_truth_means(records: list[dict]) -> dict[str, float]:
    """Mean ground-truth score per dimension over the round's samples (empty without ground truth)."""
    gt = [s["ground_truth"] for rec in records for s in rec["samples"] if "ground_truth" in s]
    return {d: float(np.mean([g[d] for g in gt])) for d in (gt[0] if gt else {})}
