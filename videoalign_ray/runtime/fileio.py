"""Atomic file writes (a reader never sees a partial file: temp file in the same folder + rename), and storage
locations given as a local path or a URI.

The temporary files and folders come from :mod:`tempfile`, which creates them 0600 / 0700 whatever the umask;
they are given the mode an ordinary ``open()`` / ``mkdir()`` would have (0666 / 0777 less the umask) before they
are renamed into place, so outputs on a shared volume stay readable by the group and by other users (a Serve
pod running as another user loading the adapter) exactly as the user's umask allows.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask (``os.umask`` can only be read by setting it: set and restored under a lock)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish_tree(root: Path) -> None:
    """Give every file under ``root`` the umask's mode (0666 less the umask; folders 0777 less it: a library that
    writes through a private temporary file, as diffusers' LoRA export does, leaves 0600), then fsync the files
    and the folders (the data reaches the disk before the rename that publishes it; a power loss leaves the old
    version or the new one, never an empty file)."""
    mask = current_umask()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if not p.is_symlink():
                os.chmod(p, 0o666 & ~mask)
                _fsync(p)
        os.chmod(dirpath, 0o777 & ~mask)
        _fsync(Path(dirpath))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The caller writes the whole file to the yielded path. The file has the umask's mode (0666 less the umask)
    and is fsynced before the rename (``fsync=False`` for files that can be recomputed, such as cache entries).
    If the block raises, the temporary file is removed and ``path`` is left
    untouched (absent or the previous version).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        mode = 0o666 & ~current_umask()
        os.chmod(tmp, mode)
        yield Path(tmp)
        os.chmod(tmp, mode)  # again: a writer may have replaced the file (safetensors writes 0600)
        if fsync:
            _fsync(Path(tmp))
        os.replace(tmp, path)
        if fsync:
            _fsync(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_files(folder: str | os.PathLike, files: dict[str, bytes]) -> list[Path]:
    """Write ``{file name: bytes}`` into ``folder`` (created), each file atomically; returns the paths in the
    dict's order. Names must be plain file names (no folder part).

    Raises:
        ValueError: a name with a folder part or ``..``.
    """
    folder = Path(folder)
    paths = []
    for name, data in files.items():
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"not a plain file name: {name!r}")
        with atomic_path(folder / name) as tmp:
            tmp.write_bytes(data)
        paths.append(folder / name)
    return paths


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (old one removed after).

    The folder and everything in it get the umask's modes (0777 / 0666 less the umask, whatever mode the writer
    used); its contents are fsynced before the rename. If the
    block raises, the temporary folder is removed and ``path`` is left as it was.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        _publish_tree(tmp)
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync(path.parent)
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
