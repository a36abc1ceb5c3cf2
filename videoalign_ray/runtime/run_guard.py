"""One job per output folder, and no silent resume under a changed command.

A rerun in an output folder resumes what is there (Ray Train checkpoints, the MLflow run, committed online
rounds). That is only right when the run is the same run: :func:`check_rerun` compares the resolved config
with the ``config.yaml`` the folder holds and refuses (:class:`~videoalign_ray.errors.ConfigError`, exit 2)
when a value that changes results differs, naming every changed key, unless the user asked to continue
(``--resume``: the differences are logged and tagged on the MLflow run) or to start over (``--overwrite``: the
folder's previous run is removed; the content-keyed latent cache and the MLflow store are kept). Keys that cannot change a result
(:data:`RESULT_NEUTRAL_KEYS`: log level, timeouts, sample counts, bookkeeping) may differ freely.

:func:`hold_output_dir` takes an exclusive file lock on ``<output_dir>/.lock`` (``filelock``) for the job's
lifetime and writes the holder's pid, host and start time beside it, so a second job started in the same
folder refuses at once, naming the holder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from videoalign_ray.errors import ConfigError
from videoalign_ray.runtime.fileio import write_text_atomic

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
OWNER_NAME = ".lock.owner.json"
KEPT_ON_OVERWRITE = {"cache", "mlflow.db", "mlartifacts", LOCK_NAME, OWNER_NAME}
"""What ``--overwrite`` leaves in place: the latent/frame cache (keyed by file, frames, size and model, so valid
for any config), the MLflow store (the earlier run stays there as history; the new run is a new MLflow run) and
the lock this job holds."""

RESULT_NEUTRAL_KEYS = frozenset({
    # bookkeeping and where things go
    "log_level", "run_name", "mlflow_tracking_uri", "mlflow_experiment", "resume", "overwrite",
    "checkpoint_every", "num_to_keep", "log_every", "storage_path", "cache_dir",
    # resources and failure handling (the same result on more or fewer actors)
    "max_failures", "cpus_per_worker", "encoder_actors", "generators", "generator_replacements",
    "gpu_memory_gib", "reward_attempts", "worker_restarts", "reward_gpu_share",
    # samples rendered for people and held-out evaluation, not trained on
    "num_samples", "eval_samples_per_prompt", "val_data", "eval_every", "val_samples", "val_sample_every",
    # a resumed run continues up to max_steps (TrainSection)
    "max_steps",
    # test hooks
    "fail_at_step", "fail_generator_on", "fail_at_round", "fail_worker_on",
})
"""Config keys whose value cannot change what a resumed run produces; every ``*_timeout_s`` key counts too."""


def is_result_neutral(key: str) -> bool:
    """Whether a change of ``key`` between two runs in one folder is allowed without ``--resume``."""
    return key in RESULT_NEUTRAL_KEYS or key.endswith("_timeout_s")


def changed_keys(previous: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two flat configs and that can change results: ``{key: (old, new)}``
    (a key present in only one of them counts, its missing side ``None``)."""
    keys = sorted((set(previous) | set(current)) - {k for k in set(previous) | set(current) if is_result_neutral(k)})
    return {k: (previous.get(k), current.get(k)) for k in keys if previous.get(k) != current.get(k)}


def check_rerun(out: Path, current: dict[str, Any], *, resume: bool, overwrite: bool) -> dict[str, tuple[Any, Any]]:
    """Decide what a run in ``out`` may do with what the folder already holds; returns the changed keys that
    were accepted (``--resume``), empty otherwise.

    Raises:
        ConfigError: ``config.yaml`` of an earlier run in ``out`` differs in a key that changes results and
            neither ``resume`` nor ``overwrite`` is set (the message lists ``key: old -> new`` for each).
    """
    previous_file = out / "config.yaml"
    if not previous_file.is_file():
        return {}
    if overwrite:
        clear_previous_run(out)
        return {}
    try:
        previous = yaml.safe_load(previous_file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{previous_file}: unreadable ({exc}); pass --overwrite to start a new run there") from None
    changes = changed_keys(previous, current)
    if not changes:
        return {}
    listing = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
    if resume:
        log.warning("--resume: continuing the run in %s with changed settings: %s", out, listing)
        return changes
    raise ConfigError(
        f"{out} holds a run with other settings ({listing}). Its checkpoints would be resumed as if they came from "
        "this command: pass --resume to continue it anyway (the changes are logged), --overwrite to start over "
        "in this folder, or another --output-dir")


def clear_previous_run(out: Path) -> None:
    """Remove everything an earlier run left in ``out`` except :data:`KEPT_ON_OVERWRITE`."""
    removed = []
    for child in out.iterdir():
        if child.name in KEPT_ON_OVERWRITE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
        removed.append(child.name)
    log.warning("--overwrite: removed the previous run in %s (%s); kept %s", out, ", ".join(sorted(removed)),
                ", ".join(sorted(KEPT_ON_OVERWRITE & {c.name for c in out.iterdir()})) or "nothing")


@contextlib.contextmanager
def hold_output_dir(out: Path) -> Iterator[None]:
    """Hold ``<out>/.lock`` for the block.

    Raises:
        ConfigError: another process holds it (names its pid, host and start time from ``.lock.owner.json``).
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(out / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(f"{out} is in use by another job ({_owner_text(out)}); wait for it to end or pick "
                          "another --output-dir") from None
    try:
        write_text_atomic(out / OWNER_NAME, json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            (out / OWNER_NAME).unlink()
        lock.release()


def _owner_text(out: Path) -> str:
    try:
        owner = json.loads((out / OWNER_NAME).read_text(encoding="utf-8"))
        return f"pid {owner['pid']} on host {owner['host']}, started {owner['started']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown: it has not written its pid yet"


def provenance() -> dict[str, str]:
    """The package version and, when the package runs from a git checkout, its commit (``+dirty`` with
    uncommitted changes to tracked files): ``{"videoalign_ray_version": ..., "git_commit": ...}``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        info = {"videoalign_ray_version": version("videoalign-ray")}
    except PackageNotFoundError:
        info = {"videoalign_ray_version": "unknown (not installed)"}
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10, check=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10, check=True).stdout.strip()
            info["git_commit"] = commit + ("+dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return info
