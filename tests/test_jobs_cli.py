"""Job configs keep their constraints, bad flags fail before any work, crashes are loud and tracked."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import videoalign_ray.experiments
import videoalign_ray.pipelines
from videoalign_ray.cli import main_for
from videoalign_ray.config import JobConfig, resolve_config
from videoalign_ray.errors import ConfigError, DataError
from videoalign_ray.sections import RuntimeSection

ROOT = Path(__file__).resolve().parents[1]


def _job_config_classes() -> list[type[JobConfig]]:
    classes = set()
    for pkg in (videoalign_ray.pipelines, videoalign_ray.experiments):
        for info in pkgutil.iter_modules(pkg.__path__):
            module = importlib.import_module(f"{pkg.__name__}.{info.name}")
            classes |= {v for v in vars(module).values()
                        if isinstance(v, type) and issubclass(v, JobConfig) and v.__module__ == module.__name__}
    return sorted(classes, key=lambda c: c.__name__)


def test_the_walk_finds_every_job_config():
    names = {c.__name__ for c in _job_config_classes()}
    for job in sorted((ROOT / "jobs").glob("*.py")):  # every entry point's config class is walked below
        text = job.read_text()
        used = text.split("main_for(")[1].split(",")[0].strip()
        assert used in names, f"{job.name}: {used} not found among {sorted(names)}"


@pytest.mark.parametrize("cls", _job_config_classes(), ids=lambda c: c.__name__)
def test_every_constrained_field_keeps_its_constraint(cls):
    """A field constrained where it was first declared (ge=1, gt=0, ...) stays constrained in every job
    config, including those that re-declare it only to change the default."""
    for name, field in cls.model_fields.items():
        for base in cls.__mro__[1:]:
            parent = base.__dict__.get("__pydantic_fields__", {}).get(name)
            if parent is not None and parent.annotation == field.annotation:
                missing = [m for m in parent.metadata if m not in field.metadata]
                assert not missing, f"{cls.__name__}.{name} lost {missing} of {base.__name__}"


@pytest.mark.parametrize("cls", _job_config_classes(), ids=lambda c: c.__name__)
def test_help_lists_every_flag_with_its_text(cls, capsys):
    """``--help`` prints every field's flag and description (a "%" in a description once made argparse raise)
    and its default; test hooks are left out."""
    from videoalign_ray.config import is_test_hook

    with pytest.raises(SystemExit) as done:
        resolve_config(cls, ["--help"])
    assert done.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # argparse wraps the lines, also at hyphens
    for name, field in cls.model_fields.items():
        if is_test_hook(field):
            assert "--" + name.replace("_", "-") not in text, name
            continue
        assert "--" + name.replace("_", "-") in text, name
        if field.default is not None and not isinstance(field.default, bool):
            assert f"(default:{field.default})" in text, name
        if field.description:
            assert "".join(field.description.split()) in text, name


@pytest.mark.parametrize("module, cls, argv", [
    ("pipelines.train_reward", "TrainRewardConfig", ["--checkpoint-every", "0"]),
    ("pipelines.train_reward", "TrainRewardConfig", ["--batch-size", "0"]),
    ("pipelines.train_reward", "TrainRewardConfig", ["--max-steps", "-3"]),
    ("pipelines.train_latent_reward", "LatentRewardConfig", ["--checkpoint-every", "0"]),
    ("pipelines.train_latent_reward", "LatentRewardConfig", ["--batch-size", "0"]),
    ("experiments.pretrain_base", "PretrainConfig", ["--checkpoint-every", "0"]),
    ("pipelines.flow_dpo", "FlowDPOConfig", ["--reward-weights", "1,2"]),
    ("pipelines.generate", "GenerateConfig", ["--reward-weights=-1,1,1"]),
    ("pipelines.generate", "GenerateConfig", ["--guidance-scale", "2"]),  # no guide source
])
def test_bad_values_are_refused_by_the_config(module, cls, argv):
    config_cls = getattr(importlib.import_module(f"videoalign_ray.{module}"), cls)
    with pytest.raises(ConfigError):
        resolve_config(config_cls, argv)


def test_a_bad_flag_exits_2_before_any_work(tmp_path):
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, "jobs/train_reward.py", "--checkpoint-every", "0", "--output-dir",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "key 'checkpoint_every'" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and "Ray" not in proc.stderr  # no folder written, no Ray started


class _Cfg(RuntimeSection):
    pass


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, capsys):
    def data_error(cfg):
        raise DataError("table.csv: no usable row")

    assert main_for(_Cfg, data_error, "", ["--output-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "error: table.csv: no usable row"

    def bug(cfg):
        raise ValueError("an internal invariant broke")  # a ValueError that is not a user error

    with pytest.raises(ValueError, match="internal invariant"):
        main_for(_Cfg, bug, "", ["--output-dir", str(tmp_path)])


def test_log_level_flag(tmp_path):
    import logging

    main_for(_Cfg, lambda cfg: {"ok": 1}, "", ["--output-dir", str(tmp_path), "--log-level", "DEBUG"])
    assert logging.getLogger("videoalign_ray").level == logging.DEBUG
    with pytest.raises(SystemExit):
        resolve_config(_Cfg, ["--log-level", "LOUD"])


def test_a_crashed_job_marks_its_mlflow_run_failed(tmp_path):
    from mlflow.tracking import MlflowClient

    from videoalign_ray.runtime.job import job_run

    cfg = _Cfg(output_dir=str(tmp_path / "job"))
    with pytest.raises(RuntimeError, match="out of memory"), job_run(cfg) as job:
        run_id, uri = job.tracker.run_id, job.tracking_uri
        assert (tmp_path / "job" / "config.yaml").is_file()
        raise RuntimeError("out of memory in step 3")
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: out of memory in step 3"

    with job_run(cfg) as job:  # a rerun re-attaches to the run and finishes it
        summary = job.complete({"steps": 3})
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert job.tracker.run_id == run_id and run.info.status == "FINISHED"
    assert summary["mlflow_run_id"] == run_id and (tmp_path / "job" / "summary.json").is_file()
