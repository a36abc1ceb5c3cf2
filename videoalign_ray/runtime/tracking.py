"""MLflow glue: one run per output folder, re-attached after a restart.

Default store: ``sqlite:///<output_dir>/mlflow.db`` with artifacts under ``<output_dir>/mlartifacts``
(MLflow 3 put the file store in maintenance mode). ``MLFLOW_TRACKING_URI`` or the config overrides it; on a
multi-node cluster use a tracking server that the workers can reach. The run id is kept in
``<output_dir>/mlflow_run.json`` so a resumed job logs into the same run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from videoalign_ray.runtime.fileio import write_text_atomic


def default_tracking_uri(output_dir: str | Path, configured: str | None = None) -> str:
    """Config value, else ``MLFLOW_TRACKING_URI``, else a sqlite store in ``output_dir``."""
    if configured:
        return configured
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def _flatten_params(params: dict[str, Any]) -> dict[str, str]:
    return {k: (json.dumps(v) if isinstance(v, (dict, list)) else str(v))[:6000] for k, v in params.items()}


class Tracker:
    """A handle on one MLflow run, usable from the driver and from the rank-0 worker."""

    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=tracking_uri)

    @classmethod
    def attach(cls, tracking_uri: str, run_id: str) -> Tracker:
        return cls(tracking_uri, run_id)

    @classmethod
    def start_or_resume(
        cls, output_dir: str | Path, tracking_uri: str, experiment: str, run_name: str, params: dict[str, Any],
        resume: bool = True,
    ) -> tuple[Tracker, bool]:
        """Re-attach to the run recorded in ``output_dir`` or create one; returns (tracker, resumed).

        ``resume=False`` always creates a new run (jobs whose re-runs are new experiments, e.g. generation).
        """
        from mlflow.tracking import MlflowClient

        output_dir = Path(output_dir)
        state_file = output_dir / "mlflow_run.json"
        client = MlflowClient(tracking_uri=tracking_uri)
        if resume and state_file.is_file():
            saved = json.loads(state_file.read_text())
            if saved.get("tracking_uri") == tracking_uri:
                try:
                    client.get_run(saved["run_id"])
                    client.update_run(saved["run_id"], status="RUNNING")
                    return cls(tracking_uri, saved["run_id"]), True
                except Exception:  # noqa: BLE001 - the store was reset: start a new run
                    pass
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            artifact_location = None
            if tracking_uri.startswith("sqlite:"):
                artifact_location = (output_dir.resolve() / "mlartifacts").as_uri()
            exp_id = client.create_experiment(experiment, artifact_location=artifact_location)
        else:
            exp_id = exp.experiment_id
        run = client.create_run(exp_id, run_name=run_name)
        tracker = cls(tracking_uri, run.info.run_id)
        tracker.log_params(params)
        write_text_atomic(state_file, json.dumps({"run_id": run.info.run_id, "tracking_uri": tracking_uri}))
        return tracker, False

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in _flatten_params(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        p = Path(path)
        if p.is_dir():
            self.client.log_artifacts(self.run_id, str(p), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(p), artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def fail(self, exc: BaseException, status: str = "FAILED") -> None:
        """End the run as ``status`` (FAILED or KILLED) with ``error`` = the exception type and message."""
        self.client.set_tag(self.run_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
        self.client.set_terminated(self.run_id, status=status)

    def close(self) -> None:
        """Nothing to flush: every call above is synchronous."""
