"""Entry-point glue for ``jobs/*.py``: parse and validate the config before any work, configure logging,
run, print the summary, exit codes.

Exit codes: 0 success; 2 a configuration or data error (:class:`~videoalign_ray.errors.UserInputError`,
one line on stderr, no traceback); any other exception is a bug or an environment failure and propagates
with its traceback (exit 1).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable

from videoalign_ray.config import JobConfig, resolve_config
from videoalign_ray.errors import UserInputError
from videoalign_ray.runtime.output_mirror import mirrored_output

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def print_summary(summary: dict) -> None:
    """Print the job summary (the job's result, on stdout) as aligned ``key: value`` lines."""
    print("\n=== summary ===")
    width = max(len(k) for k in summary)
    for k, v in summary.items():
        text = json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)
        print(f"{k:<{width}} : {text}")


def configure_logging(level: str = "INFO") -> None:
    """Log ``videoalign_ray`` at ``level`` (others at WARNING) to stderr, with timestamps."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, force=True)
    logging.getLogger("videoalign_ray").setLevel(level)


def main_for(cls: type[JobConfig], run: Callable[[JobConfig], dict], description: str | None,
             argv: list[str] | None = None) -> int:
    """Run a job; returns the exit code (argparse exits 2 itself on an unknown flag)."""
    configure_logging()
    try:
        cfg = resolve_config(cls, argv, description or "")
        configure_logging(cfg.log_level)
        with mirrored_output(cfg) as (job_cfg, publish):
            summary = publish(run(job_cfg))
            _shutdown_ray()  # flush the workers' log lines before the summary, so the summary prints last
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _shutdown_ray()
        return 2
    print_summary(summary)
    return 0


def _shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
