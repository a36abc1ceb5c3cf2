"""Key rows as Parquet files beside the tensor cache, so the object store never holds a table's rows at rest.

A data plane's key rows (cache keys, labels, ids: ~200 bytes a pair) are written once to
``<cache>/keyrows/<digest>.parquet`` (the digest hashes the rows, so a rerun finds the same file), and split
into one file per Ray Train rank, ``<digest>-rank<r>of<n>.parquet``: equal, contiguous row ranges in table
order (what ``Dataset.split(n, equal=True)`` gives; the remainder is dropped). Each Ray Train worker reads its
own file with pyarrow, one window of rows at a time, each epoch (:class:`KeyTableShard`): no Ray Data task,
which would need a CPU that the training workers hold. The files live in the cache root, which a multi-node cluster
must have on shared storage anyway (a path or a URI such as ``s3://bucket/cache``).

Memory: the driver holds the rows while it writes them (what the data planes already hold); the object store
holds only the blocks being read, independent of the number of pairs (``benchmarks/data_scaling.py``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import numpy as np

from videoalign_ray.runtime.fileio import atomic_path, is_uri

KEY_TABLE_DIR = "keyrows"


def _fs_and_path(location: str):
    """(pyarrow filesystem or None for local, path inside it) of a file location under a cache root."""
    if is_uri(location):
        from pyarrow import fs

        return fs.FileSystem.from_uri(location)
    return None, location


def _write(table, location: str, row_group_rows: int | None = None) -> None:
    """Write ``table`` to ``location`` whole or not at all (local: temp file + rename; object stores: the
    object appears when its upload completes)."""
    import pyarrow.parquet as pq

    fs, path = _fs_and_path(location)
    if fs is None:
        with atomic_path(path) as tmp:
            pq.write_table(table, str(tmp), row_group_size=row_group_rows)
        return
    with fs.open_output_stream(path) as f:
        pq.write_table(table, f, row_group_size=row_group_rows)


def _open_input(location: str):
    """A readable binary file of a key-row file (local or under a URI root); use it as a context manager."""
    fs, path = _fs_and_path(location)
    return fs.open_input_file(path) if fs is not None else open(path, "rb")


def _exists(location: str) -> bool:
    from pyarrow import fs as pafs

    fs, path = _fs_and_path(location)
    if fs is None:
        return pafs.LocalFileSystem().get_file_info(path).type == pafs.FileType.File
    return fs.get_file_info(path).type == pafs.FileType.File


def _to_table(items: list[dict[str, Any]]):
    """An Arrow table of the rows: NumPy array values become a Ray tensor column ``(N, ...)`` (read back as
    a ``(B, ...)`` array), other values Arrow's own types."""
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    columns = {}
    for name in items[0]:
        values = [r[name] for r in items]
        if isinstance(values[0], np.ndarray):
            columns[name] = ArrowTensorArray.from_numpy(np.stack(values))
        else:
            columns[name] = pa.array(values)
    return pa.table(columns)


def _digest(items: list[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for r in items:
        h.update(json.dumps({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()},
                            sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def write_key_table(items: list[dict[str, Any]], cache_dir: str, unique: bool = False,
                    row_group_rows: int | None = None) -> str | None:
    """Write the key rows ``items`` (same columns in every row) to ``<cache_dir>/keyrows/<digest>.parquet``,
    or with ``unique`` to a file of its own (``todo-<uuid4>.parquet``: a stage's input rows, removed by the
    stage after use with :func:`remove_key_table`, so two runs with the same rows never share it), in Parquet row
    groups of ``row_group_rows`` rows (pyarrow's default when None; :func:`key_table_blocks` reads one group a task).

    Returns:
        The file's location (a path, or a URI under a URI cache root); None for no rows.
    """
    if not items:
        return None
    name = f"todo-{uuid.uuid4().hex}" if unique else _digest(items)
    location = f"{str(cache_dir).rstrip('/')}/{KEY_TABLE_DIR}/{name}.parquet"
    if unique or not _exists(location):
        _write(_to_table(items), location, row_group_rows)
    return location


def key_table_dataset(location: str):
    """A lazy Ray Dataset over the key-row file at ``location`` (rows in file order when read with
    ``preserve_order``); nothing is materialized in the object store."""
    import ray

    fs, path = _fs_and_path(location)  # our filesystem (endpoint and credentials as the cache's), not Ray's guess
    return ray.data.read_parquet(path, filesystem=fs, file_extensions=None)


def read_row_groups(location: str, groups: list[int]):
    """Row groups ``groups`` of a key-row file as one Arrow table (rows in file order)."""
    import pyarrow.parquet as pq

    with _open_input(location) as f:
        return pq.ParquetFile(f).read_row_groups(sorted(groups))


def _read_block(ids: dict[str, np.ndarray], location: str):
    return read_row_groups(location, [int(i) for i in ids["id"]])


def key_table_blocks(location: str):
    """A lazy Ray Dataset of the rows of a key-row file in file order, one block per Parquet row group, each
    read from the file by its own task (write the file with ``row_group_rows`` set to the block size wanted).
    ``read_parquet`` reads one file as one block in one task (Ray 2.60), so the next stage ran as a single
    task; here it gets a task per block, and the rows reach the object store block by block, as that stage
    asks for them."""
    import pyarrow.parquet as pq
    import ray

    fs, path = _fs_and_path(location)
    groups = pq.read_metadata(path, filesystem=fs).num_row_groups
    return ray.data.range(groups, override_num_blocks=groups).map_batches(
        _read_block, fn_kwargs={"location": location}, batch_size=None, batch_format="numpy")


def remove_key_table(location: str) -> None:
    """Delete a key-row file that is no longer needed (a stage's input rows); a missing file is fine."""
    from pyarrow import fs as pafs

    if _exists(location):
        fs, path = _fs_and_path(location)
        (fs or pafs.LocalFileSystem()).delete_file(path)


def count_rows(location: str) -> int:
    """Rows of a key-row file, from its footer."""
    import pyarrow.parquet as pq

    fs, path = _fs_and_path(location)
    return pq.read_metadata(path, filesystem=fs).num_rows


def split_key_table(location: str, num_workers: int) -> tuple[list[str], int]:
    """One file per rank: rank ``r`` gets rows ``[r * per, (r + 1) * per)`` with ``per = rows // num_workers``.

    Returns:
        (the ranks' file locations, ``per``); ``per`` is 0 (and no file is written) when there are fewer
        rows than workers.
    """
    import pyarrow.parquet as pq

    fs, path = _fs_and_path(location)
    table = pq.read_table(path, filesystem=fs)
    per = table.num_rows // num_workers
    stem = location[: -len(".parquet")]
    shards = []
    for r in range(num_workers if per else 0):
        shard = f"{stem}-rank{r}of{num_workers}.parquet"
        if not _exists(shard):
            _write(table.slice(r * per, per), shard)
        shards.append(shard)
    return shards, per


class KeyTableShard:
    """A training worker's view of one key-row file: the ``iter_batches`` / ``iter_rows`` of a Ray Data shard,
    read with pyarrow in file order (record batches of ``batch_size`` rows; a tensor column comes back as a
    ``(B, ...)`` array, strings as an object array). Picklable: it holds only the file's location."""

    def __init__(self, location: str):
        self.location = location

    def __repr__(self) -> str:
        return f"KeyTableShard({self.location!r})"

    def iter_batches(self, batch_size: int, batch_format: str = "numpy"):
        """Yield ``{column: (B, ...) array}`` with ``B == batch_size`` except for the last batch."""
        import pyarrow.parquet as pq
        import ray.data.extensions  # noqa: F401 - registers the tensor column type before the file is read

        if batch_format != "numpy":
            raise ValueError(f"KeyTableShard gives numpy batches, not {batch_format!r}")
        with _open_input(self.location) as f:
            for rb in pq.ParquetFile(f).iter_batches(batch_size=batch_size):
                yield {name: col.to_numpy(zero_copy_only=False) for name, col in zip(rb.schema.names, rb.columns,
                                                                                    strict=True)}

    def iter_rows(self):
        """Yield one ``{column: value}`` dict per row, in file order."""
        for batch in self.iter_batches(1024):
            n = len(next(iter(batch.values())))
            for i in range(n):
                yield {k: v[i] for k, v in batch.items()}


_WORKER_SHARDS: dict[str, KeyTableShard] = {}


def run_with_shards(loop, shards: dict[str, KeyTableShard], config: dict):
    """Ray Train entry point (``functools.partial(run_with_shards, loop, shards)``): make ``shards`` what
    :func:`dataset_shard` returns in this worker, then run ``loop(config)``."""
    _WORKER_SHARDS.clear()
    _WORKER_SHARDS.update(shards)
    return loop(config)


def dataset_shard(name: str):
    """In a Ray Train worker: the key-row shard ``name`` given to the trainer (``shard_<rank>``, ``val``), or
    else Ray Train's own dataset shard of that name."""
    if name in _WORKER_SHARDS:
        return _WORKER_SHARDS[name]
    import ray.train

    return ray.train.get_dataset_shard(name)
