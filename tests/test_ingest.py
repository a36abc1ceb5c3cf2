"""Tables read and checked in Ray Data (data/ingest.load_pairs_ray) give what the in-process reader gives:
the same pairs, ties, rows of other dimensions and rejects with the same row numbers, for one file of each
format, a folder of mixed files, a pair store and a table of many rows."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from videoalign_ray.data.ingest import load_pairs_ray
from videoalign_ray.data.io import DataError, load_pairs

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("local_ray")]


def _same(path, **kw):
    ref, got = load_pairs(path, **kw), load_pairs_ray(path, **kw, local_max_bytes=0)  # small tables: Ray Data too
    assert got.summary() == ref.summary()
    assert got.pairs == ref.pairs  # dataclass equality: ids, rows, prompts, paths, labels, MOS, Overall
    assert sorted(got.rejects, key=lambda r: (r.row, r.column)) == sorted(ref.rejects, key=lambda r: (r.row, r.column))
    return got


def test_shared_tables_match_the_in_process_reader(shared_data):
    for dim in ("overall", "TA", "VQ"):
        _same(shared_data / "videoalign-examples" / "example.csv", dimension=dim)
    _same(shared_data / "videoalign-examples" / "example.csv", keep_ties=True)
    assert len(_same(shared_data / "fetv" / "pairs.csv", dimension="MQ").pairs) > 0
    _same(shared_data / "unifiedreward-wan" / "pairs.csv", dimension="MQ")


def _videos(tmp_path, n=3):
    (tmp_path / "v").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (tmp_path / "v" / f"{i}.mp4").write_bytes(b"x")


def _bad_rows():
    return pd.DataFrame([
        {"path_A": "v/0.mp4", "path_B": "./v/1.mp4", "prompt": "ok", "VQ": "A", "MQ": "A", "TA": "B", "MOS_A_VQ": 4.5},
        {"path_A": "v/0.mp4", "path_B": "v/missing.mp4", "prompt": "p", "VQ": "A", "MQ": "A", "TA": "A", "MOS_A_VQ": None},
        {"path_A": "v/0.mp4", "path_B": "v/1.mp4", "prompt": "  ", "VQ": "A", "MQ": "A", "TA": "A", "MOS_A_VQ": 2.0},
        {"path_A": "v/0.mp4", "path_B": "v/1.mp4", "prompt": "NA", "VQ": "maybe", "MQ": "", "TA": "A", "MOS_A_VQ": 1.0},
        {"path_A": "v/0.mp4", "path_B": "v/2.mp4", "prompt": "123", "VQ": "same", "MQ": "same", "TA": "same",
         "MOS_A_VQ": 3.0},
    ])


def test_each_format_and_a_folder_of_mixed_files(tmp_path):
    _videos(tmp_path)
    df = _bad_rows()
    df.to_csv(tmp_path / "a.csv", index=False)
    df.to_parquet(tmp_path / "b.parquet")
    df.to_json(tmp_path / "c.jsonl", orient="records", lines=True)
    for name in ("a.csv", "b.parquet", "c.jsonl"):
        got = _same(tmp_path / name)
        assert got.summary() == {"rows": 5, "pairs": 1, "ties": 1, "other_dimension": 0, "rejects": 3}, name
        _same(tmp_path / name, keep_ties=True)
    # a folder: the three files in name order, rows numbered across them (rejects of c.jsonl are rows 12-14)
    got = _same(tmp_path)
    assert got.summary()["rows"] == 15
    assert {r.row for r in got.rejects} == {2, 3, 4, 7, 8, 9, 12, 13, 14}


def test_a_pair_store_reads_only_its_committed_rounds(tmp_path):
    from videoalign_ray.online.store import PairStore

    _videos(tmp_path / "pairs", 4)
    store = PairStore(tmp_path / "pairs")
    for r in (1, 2):
        store.commit(r, pd.DataFrame({"round": [r, r], "prompt": [f"p{r}", f"q{r}"], "chosen": ["v/0.mp4", "v/2.mp4"],
                                      "rejected": ["v/1.mp4", "v/3.mp4"]}), {})
    (tmp_path / "pairs" / "round-003").mkdir()  # an uncommitted round (a killed run) is not read
    pd.DataFrame({"prompt": ["x"], "chosen": ["v/0.mp4"], "rejected": ["v/1.mp4"]}).to_parquet(
        tmp_path / "pairs" / "round-003" / "part-000.parquet")
    got = _same(tmp_path / "pairs")
    assert [p.prompt for p in got.pairs] == ["p1", "q1", "p2", "q2"]


def test_the_pair_store_reads_in_pandas_pyarrow_and_datasets_and_survives_a_move(tmp_path):
    """The online pair store as other tools see it: Hugging Face ``datasets``, pandas and pyarrow read the
    folder as is, ``round`` comes back an integer (not a category), and the video paths are relative to the
    store, so a moved output folder still trains (paths resolved against the store's new place)."""
    import datasets
    import pyarrow.dataset as pads

    from videoalign_ray.online.store import PairStore

    run = tmp_path / "run"
    _videos(run / "samples", 4)
    store = PairStore(run / "pairs")
    for r in (1, 2):
        store.commit(r, pd.DataFrame({
            "round": [r, r], "prompt": [f"p{r}", f"q{r}"],
            "chosen": [str(run / "samples" / "v" / "0.mp4"), str(run / "samples" / "v" / "2.mp4")],
            "rejected": [str(run / "samples" / "v" / "1.mp4"), str(run / "samples" / "v" / "3.mp4")]}), {})
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    run.rename(moved)
    root = moved / "pairs"

    by_pandas = pd.read_parquet(root).sort_values(["round", "prompt"], ignore_index=True)
    by_arrow = pads.dataset(root, format="parquet").to_table().to_pandas().sort_values(["round", "prompt"],
                                                                                      ignore_index=True)
    by_hf = datasets.load_dataset("parquet", data_dir=str(root), split="train",
                                  cache_dir=str(tmp_path / "hf")).to_pandas().sort_values(
        ["round", "prompt"], ignore_index=True)
    for name, df in (("pandas", by_pandas), ("pyarrow", by_arrow), ("datasets", by_hf)):
        assert str(df["round"].dtype) == "int64", (name, df["round"].dtype)
        assert df["round"].tolist() == [1, 1, 2, 2] and df["prompt"].tolist() == ["p1", "q1", "p2", "q2"], name
        assert df["chosen"].tolist()[0] == "../samples/v/0.mp4", name  # relative to the store
    read = PairStore(root).read()
    assert read["round"].dtype == "int64"
    assert Path(read["chosen"][0]).resolve() == (moved / "samples" / "v" / "0.mp4").resolve()
    got = _same(root)  # the preference-table reader resolves them against the store's folder
    assert [p.prompt for p in got.pairs] == ["p1", "q1", "p2", "q2"] and not got.rejects


def test_many_rows_over_several_files(tmp_path):
    """20,000 rows in 4 CSV files (one bad path every 97 rows): the same result, read by several tasks."""
    _videos(tmp_path, 10)
    rng = np.random.default_rng(0)
    n = 20_000
    a, b = rng.integers(0, 10, n), rng.integers(0, 10, n)
    df = pd.DataFrame({"path_A": [f"v/{i}.mp4" for i in a],
                       "path_B": [f"v/{j}.mp4" if k % 97 else "v/nope.mp4" for k, j in enumerate(b)],
                       "prompt": [f"prompt {k}" for k in range(n)],
                       "VQ": rng.choice(["A", "B", "same"], n), "MQ": rng.choice(["A", "B", "same"], n),
                       "TA": rng.choice(["A", "B", "same"], n)})
    (tmp_path / "t").mkdir()
    for i in range(4):
        df.iloc[i * n // 4:(i + 1) * n // 4].to_csv(tmp_path / "t" / f"part-{i}.csv", index=False)
    (tmp_path / "t" / "v").symlink_to(tmp_path / "v")
    got = _same(tmp_path / "t", dimension="TA")
    assert got.summary()["rows"] == n and len(got.rejects) == len(range(0, n, 97))


def test_errors_name_the_problem(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="match no known format"):
        load_pairs_ray(tmp_path / "x.csv", local_max_bytes=0)
    with pytest.raises(DataError, match="not found"):
        load_pairs_ray(tmp_path / "nope.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no table"):
        load_pairs_ray(tmp_path / "empty")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "chosen": "x"}\n{not json\n')
    with pytest.raises(DataError, match="cannot read"):
        load_pairs_ray(tmp_path / "broken.jsonl", local_max_bytes=0)
