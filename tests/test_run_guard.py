"""A rerun in an output folder: same settings resume, changed settings stop (exit 2) unless --resume or
--overwrite, one job per folder at a time, and the record holds the values the run used."""

from __future__ import annotations

import json
import multiprocessing as mp
import socket
import sqlite3
from pathlib import Path

import pytest
import yaml

from videoalign_ray.cli import main_for
from videoalign_ray.errors import ConfigError
from videoalign_ray.pipelines.flow_dpo import FlowDPOConfig
from videoalign_ray.runtime.job import job_run
from videoalign_ray.runtime.run_guard import changed_keys, check_rerun, hold_output_dir, is_result_neutral


def _record_only(cfg: FlowDPOConfig) -> dict:
    """A job body that starts nothing: the skeleton's checks and records are what is under test."""
    cfg = cfg.effective()
    with job_run(cfg) as job:
        (job.out / "ray_results").mkdir(exist_ok=True)
        (job.out / "cache").mkdir(exist_ok=True)
        return job.complete({"beta": cfg.beta})


def _run(out: Path, *flags: str) -> int:
    return main_for(FlowDPOConfig, _record_only, "", ["--output-dir", str(out), *flags])


def test_a_changed_command_stops_with_the_changed_keys_and_resume_or_overwrite_go_on(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out) == 0
    assert _run(out, "--log-level", "WARNING", "--fit-timeout-s", "60", "--num-samples", "0") == 0  # neutral keys
    capsys.readouterr()
    assert _run(out, "--beta", "100", "--dimension", "TA") == 2
    err = capsys.readouterr().err
    assert "beta: 500.0 -> 100.0" in err and "dimension: 'overall' -> 'TA'" in err and "--resume" in err, err
    assert yaml.safe_load((out / "config.yaml").read_text())["beta"] == 500.0  # the record was not rewritten

    assert _run(out, "--beta", "100", "--dimension", "TA", "--resume") == 0
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    with sqlite3.connect(out / "mlflow.db") as db:
        tag = db.execute("select value from tags where run_uuid=? and key='resumed_with_changes'", (run_id,)).fetchone()
    assert json.loads(tag[0])["beta"] == {"old": 500.0, "new": 100.0}

    assert _run(out, "--beta", "7", "--overwrite") == 0
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] != run_id  # a new run
    assert (out / "cache").is_dir() and yaml.safe_load((out / "config.yaml").read_text())["beta"] == 7.0
    assert _run(out, "--resume", "--overwrite") == 2  # one or the other


def test_neutral_keys_and_the_change_listing():
    assert is_result_neutral("log_level") and is_result_neutral("reward_timeout_s") and is_result_neutral("max_steps")
    assert not is_result_neutral("beta") and not is_result_neutral("lr") and not is_result_neutral("seed")
    assert changed_keys({"beta": 1, "log_level": "INFO", "old_key": 3}, {"beta": 2, "log_level": "DEBUG"}) == {
        "beta": (1, 2), "old_key": (3, None)}


def test_overwrite_keeps_the_cache_only(tmp_path):
    (tmp_path / "config.yaml").write_text("beta: 1\n")
    for name in ("final", "ray_results", "cache"):
        (tmp_path / name).mkdir()
    (tmp_path / "mlflow.db").write_text("")
    check_rerun(tmp_path, {"beta": 2}, resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "mlflow.db"]
    with pytest.raises(ConfigError, match="unreadable"):
        (tmp_path / "config.yaml").write_text("beta: [\n")
        check_rerun(tmp_path, {"beta": 2}, resume=False, overwrite=False)


def _hold(out: str, ready, release) -> None:
    with hold_output_dir(Path(out)):
        ready.set()
        release.wait(30)


def test_a_second_job_in_the_same_folder_refuses_naming_the_holder(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(60), "the holder process did not take the lock"
        with pytest.raises(ConfigError) as err, hold_output_dir(tmp_path):
            pass
        assert f"pid {holder.pid} on host {socket.gethostname()}" in str(err.value)
    finally:
        release.set()
        holder.join(30)
    with hold_output_dir(tmp_path):  # free again once the holder ended
        assert json.loads((tmp_path / ".lock.owner.json").read_text())["host"] == socket.gethostname()
    assert not (tmp_path / ".lock.owner.json").exists()


def test_config_yaml_and_mlflow_params_hold_the_effective_values_and_provenance(tmp_path):
    out = tmp_path / "run"
    assert _run(out) == 0
    text = (out / "config.yaml").read_text()
    cfg = yaml.safe_load(text)
    assert (cfg["lr"], cfg["lora_rank"], cfg["lora_alpha"], cfg["num_frames"]) == (1e-3, 8, 16.0, 8)  # tiny-world
    assert cfg["gradient_checkpointing"] is False
    assert text.startswith("# videoalign_ray_version: 0.1.0\n")
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    with sqlite3.connect(out / "mlflow.db") as db:
        params = dict(db.execute("select key, value from params where run_uuid=?", (run_id,)).fetchall())
        tags = dict(db.execute("select key, value from tags where run_uuid=?", (run_id,)).fetchall())
    assert (params["lr"], params["lora_rank"], params["videoalign_ray_version"]) == ("0.001", "8", "0.1.0")
    if (Path(__file__).resolve().parents[1] / ".git").exists():
        assert "git_commit" in text and len(tags["mlflow.source.git.commit"].split("+")[0]) == 40
    # the record is itself a valid --config file, and gives the same effective run
    again = tmp_path / "again"
    assert main_for(FlowDPOConfig, _record_only, "", ["--config", str(out / "config.yaml"),
                                                      "--output-dir", str(again)]) == 0
    cfg2 = yaml.safe_load((again / "config.yaml").read_text())
    assert {k: v for k, v in cfg2.items() if k != "output_dir"} == {k: v for k, v in cfg.items() if k != "output_dir"}
