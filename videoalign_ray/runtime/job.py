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
from videoalign_ray.runtime.run_guard import check_rerun, hold_output_dir, provenance

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
    """Create ``cfg.output_dir`` and hold its lock for the block, check a rerun against the folder's earlier
    ``config.yaml`` (:func:`~videoalign_ray.runtime.run_guard.check_rerun`: refuse a changed command unless
    ``--resume`` / ``--overwrite``), write the effective ``config.yaml`` (preset defaults resolved; package version
    and git commit in its header), optionally start or join Ray, start or re-attach the MLflow run
    (``resume_tracking=False``: always a new run; params are the effective config plus provenance), and mark the
    run FAILED with the error if the block raises.

    ``cfg``: a config with the :class:`~videoalign_ray.config.RuntimeSection` keys.

    Raises:
        ConfigError: ``cfg.output_dir`` is a URI (the entry points mirror it to a local folder first); another
            job holds the folder; the folder's run has other settings (see ``check_rerun``).
    """
    from videoalign_ray.errors import ConfigError
    from videoalign_ray.runtime.fileio import is_uri

    if is_uri(cfg.output_dir):
        raise ConfigError(f"output_dir {cfg.output_dir!r} is a URI: run the job inside "
                          "videoalign_ray.runtime.output_mirror.mirrored_output(cfg), as jobs/*.py do")
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with hold_output_dir(out):
        flat = cfg.effective().to_flat_dict()
        changes = check_rerun(out, flat, resume=cfg.resume, overwrite=cfg.overwrite)
        origin = provenance()
        header = "".join(f"# {k}: {v}\n" for k, v in origin.items())
        write_text_atomic(out / "config.yaml", header + yaml.safe_dump(flat, sort_keys=True))
        with _tracked_job(cfg, out, flat, origin, changes, track, resume_tracking, start_ray) as job:
            yield job


@contextlib.contextmanager
def _tracked_job(cfg, out: Path, flat: dict, origin: dict, changes: dict, track: bool, resume_tracking: bool,
                 start_ray: bool) -> Iterator[JobRun]:
    from videoalign_ray.runtime.tracking import Tracker, default_tracking_uri

    job = JobRun(out=out)
    if start_ray:
        from videoalign_ray.runtime.launch import init_ray

        init_ray()
        job.mark("ray")
    if track:
        job.tracking_uri = default_tracking_uri(out, cfg.mlflow_tracking_uri)
        job.tracker, job.resumed = Tracker.start_or_resume(
            out, job.tracking_uri, cfg.mlflow_experiment, cfg.run_name or out.name, {**flat, **origin},
            resume=resume_tracking)
        if origin.get("git_commit"):
            job.tracker.set_tags({"mlflow.source.git.commit": origin["git_commit"]})
        if changes:  # --resume with other settings: params are immutable in MLflow, so the change is a tag
            job.tracker.set_tags({"resumed_with_changes": json.dumps(
                {k: {"old": old, "new": new} for k, (old, new) in changes.items()}, default=str)})
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
