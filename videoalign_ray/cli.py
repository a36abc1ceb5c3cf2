"""Shared entry-point glue for ``jobs/*.py``: parse + validate config, run, print the summary, exit codes."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable

from videoalign_ray.config import ConfigError, JobConfig, resolve_config
from videoalign_ray.data.io import DataError


def print_summary(summary: dict) -> None:
    """Print the job summary as aligned ``key: value`` lines (nested dicts as JSON)."""
    print("\n=== summary ===")
    width = max(len(k) for k in summary)
    for k, v in summary.items():
        text = json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)
        print(f"{k:<{width}} : {text}")


def main_for(cls: type[JobConfig], run: Callable[[JobConfig], dict], description: str | None,
             argv: list[str] | None = None) -> int:
    """Run a job: 0 on success, 2 on a config or data error (message on stderr), exceptions otherwise."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = resolve_config(cls, argv, description or "")
        summary = run(cfg)
        _shutdown_ray()  # flush the workers' log lines before the summary, so the summary prints last
    except (ConfigError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0


def _shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
