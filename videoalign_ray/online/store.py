"""The append-only pair store of online rounds: ``<root>/round=NNN/part-000.parquet`` plus a manifest.

A round is committed in two atomic steps: its folder is written beside the store and renamed into place,
then ``_manifest.json`` (rewritten atomically) lists it. Readers take only the rounds in the manifest, so a
crash between the steps leaves a folder that the rerun replaces. pandas/pyarrow read the folder as a
hive-partitioned dataset as is (``round`` becomes a column; names starting with ``_`` or ``.`` are skipped).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from videoalign_ray.data.io import PAIR_STORE_MANIFEST as MANIFEST
from videoalign_ray.runtime.fileio import atomic_dir, write_text_atomic


def round_dir_name(round_: int) -> str:
    """``round=NNN`` (3 digits, more when needed)."""
    return f"round={round_:03d}"


class PairStore:
    """Committed online rounds under ``root`` (a local or shared folder)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def committed(self) -> dict[int, dict]:
        """``{round: info}`` of the committed rounds (empty when nothing is committed yet)."""
        path = self.root / MANIFEST
        if not path.is_file():
            return {}
        return {int(k): v for k, v in json.loads(path.read_text())["rounds"].items()}

    def commit(self, round_: int, pairs: pd.DataFrame, info: dict) -> Path:
        """Write ``pairs`` as round ``round_`` and list it in the manifest with ``info``; returns the folder.

        Re-committing a round replaces it. Raises ValueError for a frame without a ``round`` column equal to
        ``round_`` on every row (the partition and the rows must agree).
        """
        if len(pairs) and ("round" not in pairs or (pairs["round"] != round_).any()):
            raise ValueError(f"rows of round {round_} must carry round == {round_}")
        folder = self.root / round_dir_name(round_)
        with atomic_dir(folder) as tmp:
            # the partition value lives in the folder name; readers add it back as a column
            pairs.drop(columns=["round"], errors="ignore").to_parquet(tmp / "part-000.parquet", index=False)
        rounds = self.committed()
        rounds[round_] = {**info, "pairs": len(pairs), "folder": folder.name}
        write_text_atomic(self.root / MANIFEST, json.dumps(
            {"rounds": {str(k): rounds[k] for k in sorted(rounds)}}, indent=2, sort_keys=True))
        return folder

    def read(self, rounds: list[int] | None = None) -> pd.DataFrame:
        """The committed rows (of ``rounds`` when given), ordered by round then as written, ``round`` int."""
        wanted = sorted(self.committed()) if rounds is None else sorted(rounds)
        missing = [r for r in wanted if r not in self.committed()]
        if missing:
            raise KeyError(f"rounds {missing} are not committed in {self.root}")
        frames = []
        for r in wanted:
            df = pd.read_parquet(self.root / round_dir_name(r) / "part-000.parquet")
            frames.append(df.assign(round=r))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def is_pair_store(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a pair-store manifest."""
    return (Path(path) / MANIFEST).is_file()
