"""An output folder given as a URI (``--output-dir s3://bucket/runs/dpo1``): the job writes a local mirror of
it, which is pulled from the URI before the job and pushed back when the job ends (success or failure).

What lives where, for ``--output-dir URI``:

- ``<URI>/cache`` and ``<URI>/ray_results``: the latent/frame cache and Ray Train's checkpoints, written there
  directly by the workers (the defaults of ``--cache-dir`` and ``--storage-path`` become these when the job
  has those keys and they are not set), never through the driver's disk;
- everything else (``config.yaml``, ``summary.json``, ``rejects.csv``, the exported ``final/`` adapter, samples,
  the sqlite MLflow store, ``mlflow_run.json``): written by the job into the local mirror
  ``<staging root>/<sha1(URI)[:12]>/<URI's last name>`` and uploaded file by file when the job ends.

The staging root is ``$VIDEOALIGN_STAGING_DIR`` or ``~/.cache/videoalign_ray/outputs``. The mirror keeps the
URI's last name so the run name (default: the output folder's name) is the same on every machine, and a
rerun of the same command on another machine resumes: it pulls ``mlflow_run.json`` and the rest first, and Ray
Train finds its checkpoints under ``<URI>/ray_results/<run name>``. One job writes an output URI at a time.

Sync rule (pyarrow filesystems, so anything pyarrow opens: ``s3://``, ``gs://``, ``hdfs://``): a file is copied
when the other side lacks it or has an older modification time; after each copy the local file's mtime is set
to the remote one, so an unchanged file is not copied again. A file removed locally during the job (e.g. the
previous ``final/`` replaced by a new one) is removed from the URI. Each file is uploaded to a hidden temp
object and moved onto its name (S3: a server-side copy, objects up to 5 GB), so an interrupted upload leaves
the previous version, not a partial file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from videoalign_ray.errors import ConfigError
from videoalign_ray.runtime.fileio import atomic_path, is_uri, write_text_atomic

log = logging.getLogger(__name__)

STAGING_ENV = "VIDEOALIGN_STAGING_DIR"
DIRECT = {"cache_dir": "cache", "storage_path": "ray_results"}
"""Config key -> sub-folder of the output URI that the job's workers write to directly."""


def staging_dir(uri: str) -> Path:
    """The local mirror of output ``uri``: ``<staging root>/<sha1(uri)[:12]>/<last name of uri>``."""
    uri = uri.rstrip("/")
    root = Path(os.environ.get(STAGING_ENV) or Path.home() / ".cache" / "videoalign_ray" / "outputs")
    return (root / hashlib.sha1(uri.encode()).hexdigest()[:12] / uri.rsplit("/", 1)[-1]).resolve()


class OutputMirror:
    """Pull/push between output ``uri`` and its local mirror ``local``, skipping the top-level folders in
    ``skip`` (those the workers write to the URI directly) and hidden temp files (``.*.tmp``).

    Raises (from :meth:`pull` / :meth:`push`): ``OSError`` subclasses from pyarrow when the URI cannot be
    reached or written, with the URI in the message.
    """

    def __init__(self, uri: str, local: Path, skip: set[str] = frozenset()):
        from pyarrow import fs

        self.uri, self.local, self.skip = uri.rstrip("/"), Path(local), set(skip)
        self._fs, self._base = fs.FileSystem.from_uri(self.uri)

    def _remote(self) -> dict[str, Any]:
        """Relative path -> FileInfo of every file under the URI (not the skipped folders)."""
        from pyarrow import fs

        infos = self._fs.get_file_info(fs.FileSelector(self._base, recursive=True, allow_not_found=True))
        out = {}
        for info in infos:
            rel = info.path[len(self._base):].lstrip("/")
            if info.type == fs.FileType.File and self._keep(rel):
                out[rel] = info
        return out

    def _local(self) -> dict[str, Path]:
        if not self.local.is_dir():
            return {}
        return {p.relative_to(self.local).as_posix(): p for p in self.local.rglob("*")
                if p.is_file() and self._keep(p.relative_to(self.local).as_posix())}

    def _keep(self, rel: str) -> bool:
        name = rel.rsplit("/", 1)[-1]
        return rel.split("/", 1)[0] not in self.skip and not (name.startswith(".") and name.endswith(".tmp"))

    def probe(self) -> None:
        """Write and delete a marker object under the URI, so a missing bucket or read-only credentials fail
        before the job's work rather than at its final push."""
        marker = f"{self._base}/.videoalign-probe.tmp"
        with self._fs.open_output_stream(marker) as f:
            f.write(b"probe")
        self._fs.delete_file(marker)

    def _upload(self, path: Path, dest: str) -> None:
        """Upload ``path`` to a hidden temp object beside ``dest``, then move it onto ``dest`` (a server-side
        copy on S3: readers see the old object or the whole new one, also when the upload is interrupted; the
        temp object is removed on failure)."""
        parent, name = dest.rsplit("/", 1)
        tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(path, "rb") as src, self._fs.open_output_stream(tmp) as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
            self._fs.move(tmp, dest)
        except BaseException:
            with contextlib.suppress(Exception):
                self._fs.delete_file(tmp)
            raise

    def pull(self) -> int:
        """Copy every remote file that is missing locally or newer than the local copy; returns the count."""
        local, n = self._local(), 0
        for rel, info in self._remote().items():
            mine = local.get(rel)
            if mine is not None and mine.stat().st_mtime_ns >= info.mtime_ns:
                continue
            target = self.local / rel
            with atomic_path(target, fsync=False) as tmp, self._fs.open_input_stream(info.path) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
            os.utime(target, ns=(time.time_ns(), info.mtime_ns))
            n += 1
        return n

    def push(self) -> dict[str, int]:
        """Upload every local file missing remotely or newer than the remote one, delete remote files that are
        gone locally; returns ``{"uploaded": n, "deleted": m, "bytes": b}``."""
        remote, local = self._remote(), self._local()
        uploaded = nbytes = 0
        for rel, path in sorted(local.items()):
            theirs = remote.get(rel)
            if theirs is not None and path.stat().st_mtime_ns <= theirs.mtime_ns:
                continue
            dest = f"{self._base}/{rel}"
            self._upload(path, dest)
            nbytes += path.stat().st_size
            os.utime(path, ns=(time.time_ns(), self._fs.get_file_info(dest).mtime_ns))
            uploaded += 1
        gone = [info.path for rel, info in remote.items() if rel not in local]
        for p in gone:
            self._fs.delete_file(p)
        return {"uploaded": uploaded, "deleted": len(gone), "bytes": nbytes}


def to_uri(value: Any, local: Path, uri: str) -> Any:
    """``value`` (a summary: nested dicts/lists of strings and numbers) with every string that starts with the
    local mirror's path rewritten to the same place under ``uri``."""
    prefix = str(local)
    if isinstance(value, str) and (value == prefix or value.startswith(prefix + "/")):
        return uri + value[len(prefix):]
    if isinstance(value, dict):
        return {k: to_uri(v, local, uri) for k, v in value.items()}
    if isinstance(value, list):
        return [to_uri(v, local, uri) for v in value]
    return value


def _identity(summary: dict) -> dict:
    return summary


@contextlib.contextmanager
def mirrored_output(cfg) -> Iterator[tuple[Any, Callable[[dict], dict]]]:
    """Yield ``(cfg, publish)``: ``cfg`` unchanged and an identity ``publish`` for a local ``output_dir``; for a
    URI, pull its mirror and yield a copy of ``cfg`` whose ``output_dir`` is the mirror (and ``cache_dir`` /
    ``storage_path``, when the config has them unset, ``<URI>/cache`` / ``<URI>/ray_results``) with a
    ``publish(summary)`` that rewrites the mirror's paths in the job's summary to URIs (returned, and written
    over ``summary.json``); the mirror is pushed back when the block ends.

    A push that fails after a failed job is logged, not raised (the job's own error is the one to see); after a
    successful job it raises.

    Raises:
        ConfigError: the URI cannot be written or read (no such bucket, credentials, endpoint), before any work.
    """
    if not is_uri(cfg.output_dir):
        yield cfg, _identity
        return
    uri = cfg.output_dir.rstrip("/")
    local = staging_dir(uri)
    fields = type(cfg).model_fields
    direct = {k: f"{uri}/{sub}" for k, sub in DIRECT.items() if k in fields and getattr(cfg, k) is None}
    skip = {DIRECT[k] for k in direct}
    try:
        mirror = OutputMirror(uri, local, skip)
        mirror.probe()
        pulled = mirror.pull()
    except OSError as exc:  # pyarrow's errors for a missing bucket, bad credentials, an unreachable endpoint
        raise ConfigError(f"output_dir {uri}: cannot write and read it ({exc})") from exc
    log.info("output %s: local mirror %s; pulled %d file(s)", uri, local, pulled)

    def publish(summary: dict) -> dict:
        summary = to_uri({**summary, "output_uri": uri}, local, uri)
        write_text_atomic(local / "summary.json", json.dumps(summary, indent=2, default=str))
        return summary

    try:
        yield cfg.model_copy(update={"output_dir": str(local), **direct}), publish
    except BaseException:
        try:
            log.info("output %s after the failure: pushed %s", uri, mirror.push())
        except Exception as exc:  # keep the job's own error in front
            log.error("could not push the local mirror %s to %s: %s", local, uri, exc)
        raise
    log.info("output %s: pushed %s", uri, mirror.push())
