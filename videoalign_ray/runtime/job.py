"""The one job skeleton: output folder, ``config.yaml``, Ray, the MLflow run, ``summary.json``, failure.

Every ``run_*`` function of :mod:`videoalign_ray.pipelines` and :mod:`videoalign_ray.experiments` does its
work inside :func:`job_run`::

    with job_run(cfg) as job:
        ...                                   # job.out, job.tracker
        return job.complete({"steps": 30})    # summary.json + MLflow artifact, run FINISHED

Any exception inside the block marks the MLflow run FAILED (``KILLED`` for Ctrl-C) with the error in the
``error`` tag before it propagates, so a crashed job never leaves its run RUNNING.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from videoalign_ray.runtime.fileio import write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class JobRun:
    """One job's output folder and MLflow run (``tracker`` is None for jobs run with ``track=False``)."""

    out: Path
    tracker: Any = None
    tracking_uri: str | None = None
    resumed: bool = False
    started_unix: float = field(default_factory=time.time)
    """``time.time()`` when the job began (before Ray); ``startup`` holds seconds from it to each stage."""
    startup: dict[str, float] = field(default_factory=dict)
    _done: bool = field(default=False, repr=False)

    def mark(self, stage: str) -> float:
        """Record and return the seconds from the job's start to the end of ``stage`` (e.g. ``ray``, ``data``)."""
        self.startup[stage] = round(time.time() - self.started_unix, 3)
        return self.startup[stage]

    def complete(self, summary: dict) -> dict:
        """Add the MLflow ids to ``summary``, write ``<out>/summary.json`` atomically, log it, end the run
        FINISHED; returns the summary."""
        if self.tracker is not None:
            summary = {**summary, "mlflow_tracking_uri": self.tracking_uri, "mlflow_run_id": self.tracker.run_id}
        path = self.out / "summary.json"
        write_text_atomic(path, json.dumps(summary, indent=2, default=_jsonable))
        if self.tracker is not None:
            self.tracker.log_artifact(path)
            self.tracker.finish()
        self._done = True
        return summary


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return str(value)


@contextlib.contextmanager
def job_run(cfg, *, track: bool = True, resume_tracking: bool = True, start_ray: bool = False) -> Iterator[JobRun]:
    """Create ``cfg.output_dir``, write the resolved ``config.yaml``, optionally start or join Ray, start or
    re-attach the MLflow run (``resume_tracking=False``: always a new run), and mark the run FAILED with the
    error if the block raises.

    ``cfg``: a config with the :class:`~videoalign_ray.config.RuntimeSection` keys.

    Raises:
        ConfigError: ``cfg.output_dir`` is a URI (the entry points mirror it to a local folder first).
    """
    from videoalign_ray.errors import ConfigError
    from videoalign_ray.runtime.fileio import is_uri
    from videoalign_ray.runtime.tracking import Tracker, default_tracking_uri

    if is_uri(cfg.output_dir):
        raise ConfigError(f"output_dir {cfg.output_dir!r} is a URI: run the job inside "
                          "videoalign_ray.runtime.output_mirror.mirrored_output(cfg), as jobs/*.py do")
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", yaml.safe_dump(cfg.to_flat_dict(), sort_keys=True))
    job = JobRun(out=out)
    if start_ray:
        from videoalign_ray.runtime.launch import init_ray

        init_ray()
        job.mark("ray")
    if track:
        job.tracking_uri = default_tracking_uri(out, cfg.mlflow_tracking_uri)
        job.tracker, job.resumed = Tracker.start_or_resume(
            out, job.tracking_uri, cfg.mlflow_experiment, cfg.run_name or out.name, cfg.to_flat_dict(),
            resume=resume_tracking)
        log.info("MLflow run %s in %s%s", job.tracker.run_id, job.tracking_uri, " (resumed)" if job.resumed else "")
    try:
        yield job
    except BaseException as exc:
        if job.tracker is not None:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            with contextlib.suppress(Exception):  # never hide the job's own error behind a tracking one
                job.tracker.fail(exc, status=status)
        raise
    if job.tracker is not None and not job._done:
        job.tracker.finish()
