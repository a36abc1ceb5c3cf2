"""Atomic file writes (a reader never sees a partial file: temp file in the same folder + rename), and storage
locations given as a local path or a URI."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The caller writes the whole file to the yielded path. If the block raises, the temporary file is
    removed and ``path`` is left untouched (absent or the previous version).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (old one removed after).

    If the block raises, the temporary folder is removed and ``path`` is left as it was.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_uri(location: str | os.PathLike) -> bool:
    """True for a filesystem URI such as ``s3://bucket/prefix`` or ``gs://...`` (``file://`` counts as local)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def resolve_cache_dir(cache_dir: str | None, out: Path) -> str:
    """The cache root a job uses: ``cache_dir`` as given when it is a URI (``s3://bucket/cache``), else that
    local path made absolute; ``<out>/cache`` when it is None."""
    if cache_dir and is_uri(cache_dir):
        return cache_dir.rstrip("/")
    return str(Path(cache_dir or out / "cache").resolve())
