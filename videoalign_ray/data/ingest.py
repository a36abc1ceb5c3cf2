"""Read and validate preference tables with Ray Data: the readers (CSV / Parquet / JSONL, one file or a folder of
files) and the per-row checks (labels, prompt, video file exists) run in Ray Data tasks spread over the
cluster; the driver receives one small outcome row per table row and numbers them.

The checks are the ones of :func:`videoalign_ray.data.io.load_pairs` (same functions), so both give the same
pairs, ties and rejects with the same row numbers: 1-based data rows, counted over the files of a folder in
name order (a pair store: its committed rounds in order).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from videoalign_ray.data.io import (
    LoadResult,
    add_outcome,
    check_chosen_rejected_record,
    check_videoalign_record,
    load_pairs,
    table_files,
)
from videoalign_ray.errors import DataError

CHECK_BLOCK_BYTES = 64 << 10
"""Ray Data's block size cap while tables are read and checked (its default is 128 MiB): a table file is read
by one task, and with the default its whole table travelled as one block, then the outcome rows as another, so
the object store held ~850 bytes per table row at the peak (3.0 MiB at 4,000 rows). With 64 KiB blocks the
rows stream, and the peak stayed at ~0.03 MiB for 500 and 4,000 rows (benchmarks/data_scaling.py)."""

LOCAL_READ_MAX_BYTES = 1 << 20
"""Tables smaller than this in all (~5,000 rows of CSV) are read and checked in the driver: a Ray Data
execution costs ~2 s to start, more than checking them takes."""

PATH_COLUMN = "path"
"""The column Ray Data's readers add with ``include_paths=True`` (the file each row came from)."""

_STRING_COLUMNS = ("path_A", "path_B", "prompt", "chosen", "rejected", "dimension", "VQ", "MQ", "TA", "Overall",
                   "overall")


def _read(files: list[Path]):
    """One Ray Dataset over ``files`` (one format), rows in file order then row order, with a ``path`` column."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import ray

    paths = [str(f) for f in files]
    suffix = files[0].suffix.lower()
    if suffix == ".csv":
        # labels, prompts and paths stay text ("" stays "", "NA" stays "NA"), as the pandas reader with dtype=str
        convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in _STRING_COLUMNS},
                                       strings_can_be_null=False, quoted_strings_can_be_null=False)
        return ray.data.read_csv(paths, include_paths=True, convert_options=convert, file_extensions=None)
    if suffix in (".parquet", ".pq"):
        return ray.data.read_parquet(paths, include_paths=True, partitioning=None, file_extensions=None)
    return ray.data.read_json(paths, include_paths=True, lines=True, file_extensions=None)


def _check_batch(batch: pd.DataFrame, base: str, dimension: str, keep_ties: bool, constants: dict) -> pd.DataFrame:
    """Ray Data map: one outcome row ``{path, kind, data}`` (``data`` JSON) per table row of ``batch``."""
    if PATH_COLUMN not in batch.columns:  # an empty block
        return pd.DataFrame({PATH_COLUMN: [], "kind": [], "data": []})
    cols = set(batch.columns)
    overall_col = next((c for c in batch.columns if str(c).lower() == "overall"), None)
    out = {PATH_COLUMN: [], "kind": [], "data": []}
    for rec in batch.to_dict("records"):
        file = rec.pop(PATH_COLUMN)
        rec.update(constants.get(file, {}))
        if {"path_A", "path_B", "prompt"} <= cols:
            kind, data = check_videoalign_record(rec, Path(base), dimension, keep_ties, overall_col)
        elif {"prompt", "chosen", "rejected"} <= cols:
            kind, data = check_chosen_rejected_record(rec, Path(base), dimension, "dimension" in cols)
        else:
            kind, data = "format", sorted(str(c) for c in cols - {PATH_COLUMN})
        out[PATH_COLUMN].append(file)
        out["kind"].append(kind)
        out["data"].append(json.dumps(data))
    return pd.DataFrame(out)


def _check_files(files: list[Path], path: Path, base: str, dimension: str, keep_ties: bool, constants: dict,
                 outcomes: dict[str, list[tuple[str, str]]]) -> None:
    """Read and check ``files`` (one format) in Ray Data; append each row's (kind, data) to its file's list."""
    from videoalign_ray.runtime.launch import collect_rows

    ds = _read(files).map_batches(
        _check_batch, batch_format="pandas", batch_size=4096,
        fn_kwargs={"base": base, "dimension": dimension, "keep_ties": keep_ties, "constants": constants})
    try:
        rows = collect_rows(ds, None, f"check table rows ({files[0].suffix})", "row")
    except Exception as exc:  # noqa: BLE001 - a reader error names the file; report it as bad data
        raise DataError(f"cannot read the preference table(s) under {path}: {exc}") from exc
    for r in rows:  # in order within each file (preserve_order)
        outcomes[r[PATH_COLUMN]].append((r["kind"], r["data"]))


def load_pairs_ray(path: str | Path, dimension: str = "overall", keep_ties: bool = False,
                   local_max_bytes: int = LOCAL_READ_MAX_BYTES) -> LoadResult:
    """:func:`videoalign_ray.data.io.load_pairs` with Ray Data reading and checking the rows (Ray must be
    initialized); tables under ``local_max_bytes`` in all are read in the driver (same result, faster).
    Driver memory: one outcome row per table row while it is numbered (~0.3 KB), then the pairs (~1 KB
    each, what the data planes take); the object store holds the blocks in flight (``CHECK_BLOCK_BYTES``).

    Raises:
        DataError: missing path, a folder without tables, a file Ray Data cannot parse (named), or columns that
            match neither format.
    """
    path = Path(path)
    tables = table_files(path)
    if sum(f.stat().st_size for f, _ in tables) < local_max_bytes:
        return load_pairs(path, dimension, keep_ties)
    base = str(path if path.is_dir() else path.parent)
    order = {str(f.resolve()): i for i, (f, _) in enumerate(tables)}
    constants = {str(f.resolve()): cols for f, cols in tables if cols}
    groups: dict[str, list[Path]] = {}
    for f, _ in tables:
        kind = {".pq": ".parquet", ".ndjson": ".jsonl", ".json": ".jsonl"}.get(f.suffix.lower(), f.suffix.lower())
        groups.setdefault(kind, []).append(f.resolve())
    outcomes: dict[str, list[tuple[str, str]]] = {f: [] for f in order}
    import ray

    ctx = ray.data.DataContext.get_current()
    keep = ctx.execution_options.preserve_order, ctx.target_max_block_size
    ctx.execution_options.preserve_order = True  # row numbers
    ctx.target_max_block_size = CHECK_BLOCK_BYTES  # small rows stream in small blocks
    try:
        for files in groups.values():
            _check_files(files, path, base, dimension, keep_ties, constants, outcomes)
    finally:
        ctx.execution_options.preserve_order, ctx.target_max_block_size = keep

    res = LoadResult(source=str(path), total_rows=sum(len(v) for v in outcomes.values()))
    row = 0
    for file in sorted(outcomes, key=order.__getitem__):
        for kind, data in outcomes[file]:
            row += 1
            if kind == "format":
                raise DataError(f"{file}: columns {json.loads(data)} match no known format (VideoAlign: path_A, "
                                "path_B, prompt, VQ, MQ, TA; or prompt, chosen, rejected)")
            add_outcome(res, row, kind, json.loads(data))
    return res
