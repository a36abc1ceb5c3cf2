"""Seconds per phase of each online round at the default size, and how long the trainer and the generators
sit idle (the share of the round outside their phase): the number that tells where to overlap next.

    python benchmarks/online_round.py [--output-dir DIR] [any jobs/online_dpo.py flag, e.g. --rounds 3]

Runs ``jobs/online_dpo.py`` with the given flags (default: its defaults; an existing DIR is resumed, so
point it at a finished run to print its table without running anything) and prints one row per round.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

PHASES = ("generate", "score", "select", "store", "train", "sync", "evaluate")


def table(summary: dict) -> str:
    lines = ["| round | " + " | ".join(PHASES) + " | total s | generators idle | trainer idle |",
             "|" + "---|" * (len(PHASES) + 4)]
    for r in summary["rounds"]:
        sec = r["seconds"]
        total = sum(sec.values())
        if total == 0:
            continue
        cells = [f"{sec.get(p, 0.0):.1f}" for p in PHASES]
        lines.append(f"| {r['round']} | " + " | ".join(cells) + f" | {total:.1f} | "
                     f"{1 - sec.get('generate', 0) / total:.0%} | {1 - sec.get('train', 0) / total:.0%} |")
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
    print(table(summary))


if __name__ == "__main__":
    main()
