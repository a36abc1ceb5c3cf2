"""Config: defaults < YAML < flags; errors name the key."""

import pytest

from videoalign_ray.config import ConfigError, resolve_config
from videoalign_ray.pipelines.flow_dpo import FlowDPOConfig


def test_defaults_yaml_and_flag_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("max_steps: 7\nbeta: 100\nzero-stage: 3\n")
    cfg = resolve_config(FlowDPOConfig, ["--config", str(f), "--beta", "250", "--dimension", "MQ"])
    assert (cfg.max_steps, cfg.beta, cfg.zero_stage, cfg.dimension) == (7, 250.0, 3, "MQ")
    assert resolve_config(FlowDPOConfig, []).beta == 500.0


def test_unknown_yaml_key_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("max_stepz: 7\n")
    with pytest.raises(ConfigError, match="unknown key 'max_stepz'"):
        resolve_config(FlowDPOConfig, ["--config", str(f)])


def test_invalid_value_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("beta: -1\n")
    with pytest.raises(ConfigError, match="key 'beta'"):
        resolve_config(FlowDPOConfig, ["--config", str(f)])
    with pytest.raises(SystemExit):  # argparse rejects a bad choice on the command line
        resolve_config(FlowDPOConfig, ["--zero-stage", "5"])


def test_bool_flag(tmp_path):
    assert resolve_config(FlowDPOConfig, ["--use-gpu", "false"]).use_gpu is False
    assert resolve_config(FlowDPOConfig, ["--use-gpu"]).use_gpu is True


def test_reference_weights_only_with_the_dpo_objective():
    assert resolve_config(FlowDPOConfig, ["--reference-weights", "/r/final"]).reference_weights == "/r/final"
    with pytest.raises(ConfigError, match="reference_weights sets the Flow-DPO reference; objective 'sft'"):
        resolve_config(FlowDPOConfig, ["--reference-weights", "/r/final", "--objective", "sft"])
