"""Read preference tables (CSV / Parquet / JSONL) into validated pairs; every bad row becomes a Reject.

Nothing is dropped silently: a row is either a pair, a tie (counted), a row for another dimension (counted),
or a Reject carrying its row number, column, value and reason.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from videoalign_ray.data.schema import (
    DIMENSIONS,
    FETV_DIMENSIONS,
    LabelError,
    PreferencePair,
    Reject,
    overall_label,
    parse_label,
)
from videoalign_ray.errors import DataError
from videoalign_ray.runtime.fileio import atomic_path


@dataclass
class LoadResult:
    """Pairs built from a table, with the accounting of every other row."""

    source: str
    total_rows: int
    pairs: list[PreferencePair] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    ties: int = 0
    other_dimension: int = 0

    def summary(self) -> dict[str, int]:
        return {
            "rows": self.total_rows,
            "pairs": len(self.pairs),
            "ties": self.ties,
            "other_dimension": self.other_dimension,
            "rejects": len(self.rejects),
        }


TABLE_SUFFIXES = (".csv", ".parquet", ".pq", ".jsonl", ".json", ".ndjson")
PAIR_STORE_MANIFEST = ".manifest.json"
"""A folder holding this file is an online pair store (videoalign_ray.online.store): only the rounds it lists
are read. The leading dot hides it from pandas, pyarrow and Hugging Face ``datasets``."""
LEGACY_PAIR_STORE_MANIFEST = "_manifest.json"
"""The manifest's name in stores written by earlier versions (still read)."""


def _folder_tables(path: Path) -> list[tuple[Path, dict]]:
    """The table files of a folder with the constant columns each adds: a pair store's committed rounds
    (``round``), or every table file below ``path`` (names starting with ``.`` or ``_`` skipped)."""
    manifest = path / PAIR_STORE_MANIFEST
    if not manifest.is_file():
        manifest = path / LEGACY_PAIR_STORE_MANIFEST
    if manifest.is_file():
        rounds = json.loads(manifest.read_text())["rounds"]
        return [(f, {"round": int(r)}) for r, info in sorted(rounds.items(), key=lambda kv: int(kv[0]))
                for f in sorted((path / info["folder"]).glob("*.parquet"))]
    return [(f, {}) for f in sorted(path.rglob("*"))
            if f.is_file() and f.suffix.lower() in TABLE_SUFFIXES
            and not any(part.startswith((".", "_")) for part in f.relative_to(path).parts)]


def table_files(path: str | Path) -> list[tuple[Path, dict]]:
    """The table files a preference-table path names, with the constant columns each adds: the file itself,
    or a folder's tables in name order (a pair store: its committed rounds, with ``round``).

    Raises:
        DataError: missing path, a folder without tables, or a file of an unknown extension.
    """
    path = Path(path)
    if path.is_dir():
        files = _folder_tables(path)
        if not files:
            raise DataError(f"{path}: folder holds no table ({', '.join(TABLE_SUFFIXES)})")
        return files
    if not path.is_file():
        raise DataError(f"preference table not found: {path}")
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise DataError(f"unsupported table format {path.suffix!r} for {path} (use .csv, .parquet or .jsonl)")
    return [(path, {})]


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, Parquet or JSONL (``.jsonl`` / ``.json`` lines) table as strings-preserving DataFrame.

    A folder is read as the concatenation of its table files in name order (a pair store: its committed
    rounds, with a ``round`` column).

    Raises:
        DataError: see :func:`table_files`, or a parse error (file named).
    """
    return pd.concat([_read_file(f).assign(**cols) for f, cols in table_files(path)], ignore_index=True)


def _read_file(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_json(path, lines=True, dtype=False)  # .jsonl / .json / .ndjson (table_files checked)
    except Exception as exc:  # noqa: BLE001 - any parser error is reported with the file name
        raise DataError(f"cannot parse {path}: {exc}") from exc


def _resolve(base: Path, value: object) -> Path | None:
    text = "" if value is None else str(value).strip()
    if not text or text.lower() == "nan":
        return None
    p = Path(text)
    return p if p.is_absolute() else (base / p).resolve()


def _pair_id(prompt: str, a: str, b: str) -> str:
    return hashlib.sha1(f"{prompt}\0{a}\0{b}".encode()).hexdigest()[:16]


def load_pairs(path: str | Path, dimension: str = "overall", keep_ties: bool = False) -> LoadResult:
    """Load preference pairs from a VideoAlign or chosen/rejected table.

    Args:
        path: the table; video paths in it are relative to its folder (a leading ``./`` is allowed).
        dimension: ``VQ`` / ``MQ`` / ``TA`` (that label decides) or ``overall`` (majority over valid labels).
        keep_ties: for reward-model training: keep every labelled row as a pair with ``chosen`` = video A
            and ``rejected`` = video B; the per-dimension ``labels`` (+1 A better, -1 B better, 0 tie) carry
            the preference. Ties are then still counted in ``ties`` (on ``dimension``).

    Returns:
        LoadResult with pairs (chosen/rejected resolved), ties, rows of other dimensions and rejects.

    Raises:
        DataError: the table is unreadable or has neither format's columns.
    """
    path = Path(path)
    df = read_table(path)
    cols = set(df.columns)
    if {"path_A", "path_B", "prompt"} <= cols:
        return _load_videoalign(df, path, dimension, keep_ties)
    if {"prompt", "chosen", "rejected"} <= cols:
        return _load_chosen_rejected(df, path, dimension)
    raise DataError(
        f"{path}: columns {sorted(cols)} match no known format "
        "(VideoAlign: path_A, path_B, prompt, VQ, MQ, TA; or prompt, chosen, rejected)"
    )


def _check_common(rec: dict, base: Path, path_cols: tuple[str, str]):
    """Validate prompt and the two paths; return (prompt, paths, problems as (column, value, reason))."""
    problems = []
    prompt = str(rec.get("prompt", "") or "").strip()
    if not prompt or prompt.lower() == "nan":
        problems.append(("prompt", repr(rec.get("prompt")), "empty prompt"))
    paths = []
    for col in path_cols:
        p = _resolve(base, rec.get(col))
        if p is None:
            problems.append((col, repr(rec.get(col)), "missing video path"))
        elif not p.is_file():
            problems.append((col, str(rec.get(col)), f"video file not found: {p}"))
        paths.append(p)
    return prompt, paths, problems


def check_videoalign_record(rec: dict, base: Path, dimension: str, keep_ties: bool,
                            overall_col: str | None) -> tuple[str, object]:
    """Validate one VideoAlign row (a dict of its columns; video paths relative to ``base``).

    Returns:
        ``("reject", [(column, value, reason), ...])``, ``("tie", None)`` (not kept), or ``("pair", fields)``
        with the :class:`PreferencePair` fields except ``row``, plus ``tie`` (a tie kept as an RWR / reward row).
    """
    prompt, (pa, pb), problems = _check_common(rec, base, ("path_A", "path_B"))
    labels: dict[str, int | None] = {}
    overall = None
    for d in (*DIMENSIONS, overall_col) if overall_col else DIMENSIONS:
        try:
            value = parse_label(rec.get(d))
        except LabelError as exc:
            problems.append((d, str(rec.get(d)), str(exc)))
            continue
        if d == overall_col:
            overall = value
        else:
            labels[d] = value
    if problems:
        return "reject", problems
    decisive = overall_label(labels) if dimension == "overall" else labels[dimension]
    if decisive is None and keep_ties and any(v is not None for v in labels.values()):
        decisive = 0  # the chosen dimension is unlabelled but others are: still a training row
    if decisive is None:
        return "reject", [(dimension, "", f"no label for dimension {dimension}")]
    if decisive == 0 and not keep_ties:
        return "tie", None
    a, b = str(pa), str(pb)
    chosen, rejected = (a, b) if decisive > 0 or keep_ties else (b, a)
    mos = {}
    for side in ("A", "B"):
        for d in DIMENSIONS:
            v = pd.to_numeric(rec.get(f"MOS_{side}_{d}"), errors="coerce")
            if v is not None and pd.notna(v):
                mos[f"{side}_{d}"] = float(v)
    return "pair", {"pair_id": _pair_id(prompt, a, b), "prompt": prompt, "chosen": chosen, "rejected": rejected,
                    "labels": labels, "mos": mos, "overall": overall, "tie": decisive == 0}


def check_chosen_rejected_record(rec: dict, base: Path, dimension: str, has_dim: bool) -> tuple[str, object]:
    """Validate one chosen/rejected row; returns ``("reject", problems)``, ``("other", None)`` (a row for
    another dimension) or ``("pair", fields)`` as :func:`check_videoalign_record`."""
    prompt, (pc, pr), problems = _check_common(rec, base, ("chosen", "rejected"))
    row_dims: tuple[str, ...] = DIMENSIONS
    if has_dim:
        raw = str(rec.get("dimension") or "").strip()
        mapped = FETV_DIMENSIONS.get(raw.upper())
        if mapped is None:
            problems.append(("dimension", raw, "unknown dimension (VQ/MQ/TA or SQ/TQ/Alignment)"))
        else:
            row_dims = (mapped,)
    if problems:
        return "reject", problems
    if dimension != "overall" and dimension not in row_dims:
        return "other", None
    c, r = str(pc), str(pr)
    if c == r:
        return "reject", [("rejected", str(rec.get("rejected")), "chosen and rejected are the same file")]
    # labels from the chosen video's point of view (A = chosen): +1 on the dimensions the row speaks for.
    labels = {d: (1 if d in row_dims else None) for d in DIMENSIONS}
    return "pair", {"pair_id": _pair_id(prompt, c, r), "prompt": prompt, "chosen": c, "rejected": r,
                    "labels": labels, "mos": {}, "overall": None, "tie": False}


def add_outcome(res: LoadResult, row: int, kind: str, data: object) -> None:
    """Account one checked row (1-based ``row``) in ``res``: a pair, a tie, a row of another dimension or its
    rejects."""
    if kind == "reject":
        res.rejects.extend(Reject(row, col, value, reason) for col, value, reason in data)
    elif kind == "tie":
        res.ties += 1
    elif kind == "other":
        res.other_dimension += 1
    else:
        fields = dict(data)
        if fields.pop("tie"):
            res.ties += 1
        res.pairs.append(PreferencePair(row=row, **fields))


def _load_videoalign(df: pd.DataFrame, path: Path, dimension: str, keep_ties: bool = False) -> LoadResult:
    base = path if path.is_dir() else path.parent
    res = LoadResult(source=str(path), total_rows=len(df))
    overall_col = next((c for c in df.columns if str(c).lower() == "overall"), None)
    for i, rec in enumerate(df.to_dict("records"), start=1):
        add_outcome(res, i, *check_videoalign_record(rec, base, dimension, keep_ties, overall_col))
    return res


def _load_chosen_rejected(df: pd.DataFrame, path: Path, dimension: str) -> LoadResult:
    base = path if path.is_dir() else path.parent
    res = LoadResult(source=str(path), total_rows=len(df))
    has_dim = "dimension" in df.columns
    for i, rec in enumerate(df.to_dict("records"), start=1):
        add_outcome(res, i, *check_chosen_rejected_record(rec, base, dimension, has_dim))
    return res


def write_rejects(path: str | Path, rejects: list[Reject]) -> Path:
    """Write rejects as CSV (row, column, value, reason) atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["row", "column", "value", "reason"])
        for r in sorted(rejects, key=lambda r: (r.row, r.column)):
            w.writerow([r.row, r.column, r.value, r.reason])
    return path


def check_reject_budget(result: LoadResult, max_reject_fraction: float) -> None:
    """Raise DataError when no pair is left or rejects exceed ``max_reject_fraction`` of the rows."""
    n = max(result.total_rows, 1)
    frac = len(result.rejects) / n
    if frac > max_reject_fraction:
        raise DataError(
            f"{result.source}: {len(result.rejects)} of {result.total_rows} rows rejected "
            f"({frac:.0%} > max_reject_fraction {max_reject_fraction:.0%}); see rejects.csv"
        )
    if not result.pairs:
        raise DataError(f"{result.source}: no usable preference pair ({result.summary()}); see rejects.csv")
