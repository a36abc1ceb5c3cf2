"""Preference tables: both formats, three file types, every bad row rejected with a reason."""

import pandas as pd
import pytest

from videoalign_ray.data.io import DataError, check_reject_budget, load_pairs, write_rejects
from videoalign_ray.data.schema import LabelError, overall_label, parse_label


def test_labels():
    assert [parse_label(x) for x in ("A", "b", " same ", "Tie", None, "", float("nan"))] == [1, -1, 0, 0, None, None, None]
    with pytest.raises(LabelError):
        parse_label("C")
    assert overall_label({"VQ": -1, "MQ": -1, "TA": 1}) == -1
    assert overall_label({"VQ": 0, "MQ": 0, "TA": 1}) == 1
    assert overall_label({"VQ": 1, "MQ": -1, "TA": 0}) == 0
    assert overall_label({"VQ": None}) is None


def test_videoalign_example(shared_data):
    res = load_pairs(shared_data / "videoalign-examples" / "example.csv", "overall")
    assert res.summary() == {"rows": 3, "pairs": 3, "ties": 0, "other_dimension": 0, "rejects": 0}
    first = res.pairs[0]  # labels B, B, A -> B wins overall
    assert first.chosen.endswith("example_1_B.mp4") and first.rejected.endswith("example_1_A.mp4")
    by_ta = load_pairs(shared_data / "videoalign-examples" / "example.csv", "TA")
    assert (len(by_ta.pairs), by_ta.ties) == (2, 1)  # TA labels: A, A, same
    by_vq = load_pairs(shared_data / "videoalign-examples" / "example.csv", "VQ")
    assert (len(by_vq.pairs), by_vq.ties) == (2, 1)  # VQ labels: B, same, A


def test_chosen_rejected_tables(shared_data):
    uni = load_pairs(shared_data / "unifiedreward-wan" / "pairs.csv", "MQ")
    assert len(uni.pairs) == 18 and not uni.rejects
    fetv = load_pairs(shared_data / "fetv" / "pairs.csv", "MQ")
    n_tq = (pd.read_csv(shared_data / "fetv" / "pairs.csv")["dimension"] == "TQ").sum()
    assert len(fetv.pairs) == n_tq and fetv.other_dimension == 52 - n_tq
    assert len(load_pairs(shared_data / "fetv" / "pairs.csv", "overall").pairs) == 52


def _write_videos(tmp_path, names):
    (tmp_path / "v").mkdir()
    for n in names:
        (tmp_path / "v" / n).write_bytes(b"x")


def test_bad_rows_are_rejected_with_reasons(tmp_path):
    _write_videos(tmp_path, ["a.mp4", "b.mp4"])
    df = pd.DataFrame([
        {"path_A": "v/a.mp4", "path_B": "./v/b.mp4", "prompt": "ok", "VQ": "A", "MQ": "A", "TA": "B"},
        {"path_A": "v/a.mp4", "path_B": "v/missing.mp4", "prompt": "p", "VQ": "A", "MQ": "A", "TA": "A"},
        {"path_A": "v/a.mp4", "path_B": "v/b.mp4", "prompt": "  ", "VQ": "A", "MQ": "A", "TA": "A"},
        {"path_A": "v/a.mp4", "path_B": "v/b.mp4", "prompt": "p", "VQ": "maybe", "MQ": "A", "TA": "A"},
        {"path_A": "v/a.mp4", "path_B": "v/b.mp4", "prompt": "p", "VQ": "same", "MQ": "same", "TA": "same"},
    ])
    for suffix in ("csv", "parquet", "jsonl"):
        path = tmp_path / f"t.{suffix}"
        if suffix == "csv":
            df.to_csv(path, index=False)
        elif suffix == "parquet":
            df.to_parquet(path)
        else:
            df.to_json(path, orient="records", lines=True)
        res = load_pairs(path)
        assert res.summary() == {"rows": 5, "pairs": 1, "ties": 1, "other_dimension": 0, "rejects": 3}, suffix
        reasons = {(r.row, r.column): r.reason for r in res.rejects}
        assert "video file not found" in reasons[(2, "path_B")]
        assert reasons[(3, "prompt")] == "empty prompt"
        assert "unknown label 'maybe'" in reasons[(4, "VQ")]
        assert res.pairs[0].chosen.endswith("v/a.mp4")
    out = write_rejects(tmp_path / "rejects.csv", res.rejects)
    written = pd.read_csv(out)
    assert list(written.columns) == ["row", "column", "value", "reason"] and len(written) == 3
    with pytest.raises(DataError, match="rows rejected"):
        check_reject_budget(res, 0.5)
    check_reject_budget(res, 0.7)


def test_unknown_format_and_missing_table(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="match no known format"):
        load_pairs(tmp_path / "x.csv")
    with pytest.raises(DataError, match="not found"):
        load_pairs(tmp_path / "nope.csv")


def test_a_table_overall_column_is_kept_as_its_own_label(tmp_path):
    """VideoGen-RewardBench carries an Overall label: it is read as is (not the VQ/MQ/TA majority); a bad
    value rejects its row with the column named; a table without it leaves ``overall`` None."""
    _write_videos(tmp_path, ["a.mp4", "b.mp4"])
    rows = [("A", "A", "B", "B"), ("B", "B", "same", "A"), ("A", "same", "A", "maybe")]
    pd.DataFrame([{"path_A": "v/a.mp4", "path_B": "v/b.mp4", "prompt": f"p{i}", "VQ": vq, "MQ": mq, "TA": ta,
                   "Overall": ov} for i, (vq, mq, ta, ov) in enumerate(rows)]).to_csv(tmp_path / "t.csv", index=False)
    res = load_pairs(tmp_path / "t.csv", keep_ties=True)
    assert [p.overall for p in res.pairs] == [-1, 1]  # the majorities would be +1 and -1
    assert [(r.row, r.column) for r in res.rejects] == [(3, "Overall")]
    pd.DataFrame([{"path_A": "v/a.mp4", "path_B": "v/b.mp4", "prompt": "p", "VQ": "A", "MQ": "A", "TA": "B"}]).to_csv(
        tmp_path / "u.csv", index=False)
    assert load_pairs(tmp_path / "u.csv", keep_ties=True).pairs[0].overall is None
