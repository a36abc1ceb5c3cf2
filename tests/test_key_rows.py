"""Key rows: training data travel as cache keys and are loaded where they are consumed (no Ray needed here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from videoalign_ray.data.cache import TensorCache, cache_loader, load_batch, load_row
from videoalign_ray.runtime.driver import _batches
from videoalign_ray.runtime.key_table import write_key_table


class ListShard:
    """A shard stand-in: ``iter_batches`` over a list of rows, in order (what a materialized Ray shard does)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def iter_batches(self, batch_size: int, batch_format: str = "numpy"):
        for i in range(0, len(self.rows), batch_size):
            chunk = self.rows[i : i + batch_size]
            yield {k: np.array([r[k] for r in chunk]) for k in chunk[0]}


@pytest.fixture
def cache(tmp_path):
    c = TensorCache(tmp_path / "cache")
    for i in range(10):
        c.put(f"lat{i:02d}", torch.full((2, 3), float(i)))
        c.put(f"frm{i:02d}", torch.full((i % 3 + 1, 4, 4, 3), i, dtype=torch.uint8))  # ragged frame counts
    return c


def test_load_row_and_batch_replace_key_columns(cache):
    row = {"pair_id": "p", "chosen_key": "lat03", "labels": np.array([1, 0, -1])}
    out = load_row(row, cache)
    assert set(out) == {"pair_id", "chosen", "labels"} and out["chosen"].tolist() == [[3.0] * 3] * 2
    batch = {"chosen_key": np.array(["lat01", "lat02"]), "frames_a_key": np.array(["frm01", "frm02"]),
             "w": np.array([0.5, 1.5])}
    out = load_batch(batch, cache)
    assert out["chosen"].shape == (2, 2, 3) and out["chosen"][1, 0, 0] == 2.0  # equal shapes: stacked
    assert out["frames_a"].dtype == object and [f.shape[0] for f in out["frames_a"]] == [2, 3]  # ragged: kept
    assert out["w"].tolist() == [0.5, 1.5] and "chosen_key" not in out
    with pytest.raises(FileNotFoundError, match="lat99.*chosen_key.*shared storage"):
        load_row({"chosen_key": "lat99"}, cache)


def test_worker_reader_gives_the_same_batches_as_tensor_rows(cache):
    """The driver's reader over key rows (loads prefetched in a thread) yields exactly the batches, in the same
    order, as over rows that carry the tensors, including after a resume that skips consumed batches."""
    keyed = [{"chosen_key": f"lat{i:02d}", "i": i} for i in range(10)]
    full = [{"chosen": np.full((2, 3), float(i), np.float32), "i": i} for i in range(10)]
    for skip in (0, 3):
        a = list(_batches(ListShard(keyed), 2, seed=7, epoch=1, skip=skip, load=cache_loader(str(cache.root)),
                          prefetch=2))
        b = list(_batches(ListShard(full), 2, seed=7, epoch=1, skip=skip))
        assert [i for i, _ in a] == [i for i, _ in b] == list(range(skip, 5))
        for (_, x), (_, y) in zip(a, b, strict=True):
            assert torch.equal(x["chosen"], y["chosen"]) and torch.equal(x["i"], y["i"])
            assert torch.equal(x["chosen"][:, 0, 0].long(), x["i"])  # each row got its own tensor


def test_key_table_round_trips_and_splits_like_an_equal_ray_split(tmp_path, local_ray):
    """Key rows written beside the cache read back in order with their types (a label vector stays a
    ``(B, 3)`` array), the same through Ray Data and through the workers' own reader; the per-rank files hold equal contiguous ranges, as ``Dataset.split(n, equal=True)``
    of the same rows does; the same rows give the same file (a rerun finds it)."""
    import ray

    from videoalign_ray.data.cache import KeyRows

    items = [{"pair_id": f"p{i}", "chosen_key": f"lat{i:02d}", "w": i / 2, "labels": np.array([i, 0, -1])}
             for i in range(11)]
    table = write_key_table(items, str(tmp_path / "cache"))
    assert table.startswith(str(tmp_path / "cache" / "keyrows")) and table == write_key_table(items, str(tmp_path / "cache"))
    assert write_key_table([], str(tmp_path / "cache")) is None
    rows = KeyRows(table=table, cache_dir=str(tmp_path / "cache"))
    assert rows.count() == 11
    back = rows.rows.take_all()
    assert [r["pair_id"] for r in back] == [f"p{i}" for i in range(11)] and back[3]["labels"].tolist() == [3, 0, -1]
    batch = next(iter(rows.rows.iter_batches(batch_size=4, batch_format="numpy")))
    assert batch["labels"].shape == (4, 3) and batch["labels"].dtype == np.int64 and batch["w"].tolist() == [0, .5, 1, 1.5]
    for a, b in zip(rows.shard().iter_batches(4), rows.rows.iter_batches(batch_size=4, batch_format="numpy"),
                    strict=True):  # the workers' pyarrow reader gives Ray Data's batches
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    shards, per = rows.split(3)
    ours = [[r["pair_id"] for r in s.iter_rows()] for s in shards]
    theirs = [[r["pair_id"] for r in s.take_all()]
              for s in ray.data.from_items([{"pair_id": r["pair_id"]} for r in items]).split(3, equal=True)]
    assert per == 3 and ours == theirs == [["p0", "p1", "p2"], ["p3", "p4", "p5"], ["p6", "p7", "p8"]]
    assert rows.split(12) == ([], 0)  # fewer rows than ranks: no shard (split_for_workers raises DataError)


def test_stage_input_blocks_read_their_own_row_groups(tmp_path, local_ray):
    """A stage's input file in row groups of 4 rows: ``key_table_blocks`` gives every row once, in file order,
    one block per row group (4, 4, 2 rows); ``remove_key_table`` deletes the file."""
    import pyarrow.parquet as pq

    from videoalign_ray.runtime.key_table import key_table_blocks, read_row_groups, remove_key_table

    items = [{"path": f"v{i}", "prompt": "", "key": str(i)} for i in range(10)]
    loc = write_key_table(items, str(tmp_path / "cache"), unique=True, row_group_rows=4)
    assert pq.read_metadata(loc).num_row_groups == 3
    assert read_row_groups(loc, [2, 1]).column("path").to_pylist() == [f"v{i}" for i in range(4, 10)]
    ds = key_table_blocks(loc)
    assert [r["path"] for r in ds.take_all()] == [f"v{i}" for i in range(10)]
    assert [len(b["path"]) for b in ds.iter_batches(batch_size=None)] == [4, 4, 2]
    remove_key_table(loc)
    assert not Path(loc).exists()
