"""Seconds per phase of each online round, and GPU-seconds reserved vs busy per round (the idle share), in either
placement of ``jobs/online_dpo.py``: the number that says how much of the cluster the loop wastes.

    python benchmarks/online_round.py --placement separate [any jobs/online_dpo.py flag, e.g. --rounds 3]
    python benchmarks/online_round.py --placement colocated

Runs ``jobs/online_dpo.py`` with the given flags (an existing ``--output-dir`` is resumed, so point it at a
finished run to print its table without running anything) and prints one row per round.

GPU-seconds (worker-seconds on a CPU machine): *separate*: the ``--generator-actors`` actors hold a GPU each for
the whole round and are busy while generating; the round's Ray Train group holds ``--num-workers`` GPUs during
the train phase (its start included, counted busy: generous to this mode). *colocated*: the job's own accounting,
``num_workers`` x the round's wall time reserved, the workers' measured sampling + training seconds busy.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def _row(r: dict, cfg) -> tuple[dict, float, float, int]:
    sec = r["seconds"]
    if "gpu_seconds_reserved" in r:  # colocated: measured by the job
        return sec, r["gpu_seconds_reserved"], r["gpu_seconds_busy"], 0
    total = sum(sec.values())
    gens, workers = cfg.generator_actors, cfg.num_workers
    reserved = gens * total + workers * sec.get("train", 0.0)
    busy = gens * sec.get("generate", 0.0) + workers * sec.get("train", 0.0)
    return sec, reserved, busy, 1


def table(summary: dict, cfg) -> str:
    """Markdown rows: round, seconds per phase, GPU-s reserved / busy, idle share, worker-group starts."""
    phases = sorted({p for r in summary["rounds"] for p in r["seconds"] if p != "round"})
    lines = [f"placement: {summary.get('placement', 'separate')}",
             "| round | " + " | ".join(phases) + " | GPU-s reserved | GPU-s busy | idle share | group starts |",
             "|" + "---|" * (len(phases) + 5)]
    for r in summary["rounds"]:
        sec, reserved, busy, starts = _row(r, cfg)
        if reserved == 0:
            continue
        starts = starts or (1 if r["round"] == 1 else 0)
        lines.append(f"| {r['round']} | " + " | ".join(f"{sec.get(p, 0.0):.1f}" for p in phases)
                     + f" | {reserved:.1f} | {busy:.1f} | {1 - busy / reserved:.0%} | {starts} |")
    return "\n".join(lines)


def main() -> None:
    from videoalign_ray.cli import configure_logging
    from videoalign_ray.config import resolve_config
    from videoalign_ray.pipelines.online_dpo import OnlineDPOConfig, run_online_dpo

    argv = sys.argv[1:]
    if "--output-dir" not in argv:
        argv = ["--output-dir", str(Path(tempfile.mkdtemp(prefix="online-bench-")) / "run"), *argv]
    configure_logging()
    cfg = resolve_config(OnlineDPOConfig, argv, __doc__)
    run_online_dpo(cfg)
    summary = json.loads((Path(cfg.output_dir) / "summary.json").read_text())
    print(table(summary, cfg))


if __name__ == "__main__":
    main()
