"""The append-only pair store of online rounds: ``<root>/round-NNN/part-000.parquet`` plus a manifest.

A round is committed in two atomic steps: its folder is written beside the store and renamed into place,
then ``.manifest.json`` (rewritten atomically) lists it. Readers take only the rounds in the manifest, so a
crash between the steps leaves a folder that the rerun replaces.

The store is a plain Parquet folder for other tools: pandas, pyarrow and Hugging Face ``datasets`` read it
as is (the manifest's leading dot hides it from all three). ``round`` is an int64 column in the files (not a
``round=NNN`` hive partition, which pandas and pyarrow read back as a category), and the video paths
(``chosen``, ``rejected``) are stored relative to the store's folder, so the store keeps working when the
output folder is moved or mounted elsewhere; :meth:`PairStore.read` and the preference-table reader resolve
them against it. Stores written before this layout (``_manifest.json``, ``round=NNN/``, absolute paths) are
still read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from videoalign_ray.data.io import LEGACY_PAIR_STORE_MANIFEST, PAIR_STORE_MANIFEST
from videoalign_ray.runtime.fileio import atomic_dir, write_text_atomic

PATH_COLUMNS = ("chosen", "rejected")
"""Columns holding video paths (stored relative to the store's folder)."""


def round_dir_name(round_: int) -> str:
    """``round=NNN`` (3 digits, more when needed): the online job's per-round folders under ``rounds/``."""
    return f"round={round_:03d}"


def store_dir_name(round_: int) -> str:
    """``round-NNN``: a round's folder in the pair store (no ``=``: not a hive partition)."""
    return f"round-{round_:03d}"


class PairStore:
    """Committed online rounds under ``root`` (a local or shared folder)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def committed(self) -> dict[int, dict]:
        """``{round: info}`` of the committed rounds (empty when nothing is committed yet)."""
        path = self.root / PAIR_STORE_MANIFEST
        if not path.is_file():
            path = self.root / LEGACY_PAIR_STORE_MANIFEST
        if not path.is_file():
            return {}
        return {int(k): v for k, v in json.loads(path.read_text())["rounds"].items()}

    def commit(self, round_: int, pairs: pd.DataFrame, info: dict) -> Path:
        """Write ``pairs`` as round ``round_`` and list it in the manifest with ``info``; returns the folder.
        Absolute ``chosen`` / ``rejected`` paths are stored relative to the store's folder (relative ones are
        taken to be relative to it already).

        Re-committing a round replaces it. Raises ValueError for a frame without a ``round`` column equal to
        ``round_`` on every row (the partition and the rows must agree).
        """
        if len(pairs) and ("round" not in pairs or (pairs["round"] != round_).any()):
            raise ValueError(f"rows of round {round_} must carry round == {round_}")
        folder = self.root / store_dir_name(round_)
        self.root.mkdir(parents=True, exist_ok=True)
        root = self.root.resolve()
        stored = pairs.assign(round=pd.Series([round_] * len(pairs), index=pairs.index, dtype="int64"))
        for col in PATH_COLUMNS:
            if col in stored:
                # absolute paths become relative to the store; relative ones already are
                stored[col] = [os.path.relpath(p, root) if Path(p).is_absolute() else str(p) for p in stored[col]]
        with atomic_dir(folder) as tmp:
            stored.to_parquet(tmp / "part-000.parquet", index=False)
        rounds = self.committed()
        rounds[round_] = {**info, "pairs": len(pairs), "folder": folder.name}
        write_text_atomic(self.root / PAIR_STORE_MANIFEST, json.dumps(
            {"rounds": {str(k): rounds[k] for k in sorted(rounds)}}, indent=2, sort_keys=True))
        return folder

    def read(self, rounds: list[int] | None = None) -> pd.DataFrame:
        """The committed rows (of ``rounds`` when given), ordered by round then as written, ``round`` int64,
        video paths absolute (resolved against the store's folder)."""
        committed = self.committed()
        wanted = sorted(committed) if rounds is None else sorted(rounds)
        missing = [r for r in wanted if r not in committed]
        if missing:
            raise KeyError(f"rounds {missing} are not committed in {self.root}")
        root = self.root.resolve()
        frames = []
        for r in wanted:
            df = pd.read_parquet(self.root / committed[r]["folder"] / "part-000.parquet")
            df = df.assign(round=pd.Series([r] * len(df), index=df.index, dtype="int64"))
            for col in PATH_COLUMNS:
                if col in df:
                    df[col] = [str(root / p) if not Path(p).is_absolute() else p for p in df[col]]
            frames.append(df)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def is_pair_store(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a pair-store manifest."""
    return (Path(path) / PAIR_STORE_MANIFEST).is_file() or (Path(path) / LEGACY_PAIR_STORE_MANIFEST).is_file()
