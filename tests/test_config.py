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
    with pytest.raises(ConfigError, match="reference_weights sets the reference model; objective 'sft'"):
        resolve_config(FlowDPOConfig, ["--reference-weights", "/r/final", "--objective", "sft"])


def test_help_shows_defaults_and_choices_keeps_the_examples_and_hides_test_hooks():
    from videoalign_ray.config import build_parser
    from videoalign_ray.pipelines.online_dpo import OnlineDPOConfig

    doc = "Flow-DPO.\n\n    python jobs/flow_dpo.py\n    python jobs/flow_dpo.py --max-steps 20\n"
    text = build_parser(FlowDPOConfig, doc).format_help()
    assert "    python jobs/flow_dpo.py\n    python jobs/flow_dpo.py --max-steps 20\n" in text  # not reflowed
    flat = " ".join(text.split())
    assert "(default: 500.0)" in flat and "(default: 30)" in flat and "(default: false)" in flat  # beta, max_steps
    assert "{0,1,2,3}" in flat and "{VQ,MQ,TA,overall}" in flat and "{dpo,rwr,sft,pretrain}" in flat
    assert "--fail-at-step" not in text and "--sample-guidance" not in text  # test hook, deprecated name
    assert "--fail-generator-on" not in build_parser(OnlineDPOConfig, "").format_help()
    assert resolve_config(FlowDPOConfig, ["--fail-at-step", "3"]).fail_at_step == 3  # hidden, still accepted


def test_every_job_help_renders_and_names_no_shared_text_that_is_wrong_for_it():
    """--help of every job config (argparse %-formats help: a stray percent sign made it raise)."""
    from videoalign_ray.config import build_parser
    from videoalign_ray.pipelines.generate import GenerateConfig

    gen = " ".join(build_parser(GenerateConfig, "").format_help().split())
    assert "Frames per training video" not in gen and "Ray Train run name" not in gen


def test_old_flag_names_still_work_with_a_deprecation_line(tmp_path, caplog):
    from videoalign_ray.pipelines.generate import GenerateConfig
    from videoalign_ray.pipelines.score_videos import ScoreVideosConfig

    caplog.set_level("WARNING", logger="videoalign_ray.config")
    cfg = resolve_config(GenerateConfig, ["--steps", "7", "--weights", "0,0,1", "--shift", "3"])
    assert (cfg.sample_steps, cfg.reward_weights, cfg.sample_shift) == (7, "0,0,1", 3.0)
    assert "--steps / 'steps' is deprecated" in caplog.text and "use --sample-steps" in caplog.text
    f = tmp_path / "c.yaml"
    f.write_text("checkpoint: /ck\ninput: /videos\nactors: 2\n")
    sc = resolve_config(ScoreVideosConfig, ["--config", str(f)])
    assert (sc.reward_checkpoint, sc.data, sc.scorer_actors) == ("/ck", "/videos", 2)
    assert resolve_config(FlowDPOConfig, ["--sample-guidance", "5"]).cfg_scale == 5.0
    assert ScoreVideosConfig(checkpoint="/x").reward_checkpoint == "/x"  # keyword arguments too
    with pytest.raises(ConfigError, match="'checkpoint' is the old name of 'reward_checkpoint'"):
        resolve_config(ScoreVideosConfig, ["--checkpoint", "/a", "--reward-checkpoint", "/b"])
    # a flag overrides the YAML under either name
    assert resolve_config(ScoreVideosConfig, ["--config", str(f), "--reward-checkpoint", "/new"]).reward_checkpoint == "/new"
