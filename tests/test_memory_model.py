"""The memory model (fake-tensor count of one Flow-DPO micro-step), the gradient-checkpointing knob and
--global-batch."""

import logging
from types import SimpleNamespace

import pytest
import torch

from videoalign_ray.errors import ConfigError
from videoalign_ray.flow.memory import WAN21_T2V_1_3B, latent_size, step_memory, tokens_per_video
from videoalign_ray.runtime.launch import resolve_grad_accum

SMALL = {**WAN21_T2V_1_3B, "num_layers": 2}  # the real block (dim 1536, ffn 8960, 12 heads), two of them


def test_clip_sizes_match_wan21():
    assert latent_size(81, 480, 832) == (21, 60, 104)  # the paper's latents, 16 x 21 x 60 x 104
    assert tokens_per_video(WAN21_T2V_1_3B, 81, 480, 832) == 21 * 30 * 52


@pytest.mark.parametrize("checkpointing", [False, True])
def test_fake_count_equals_a_real_cpu_run(checkpointing):
    kw = dict(num_frames=5, height=64, width=64, micro_batch=1, text_tokens=32, lora_rank=8,
              gradient_checkpointing=checkpointing)
    fake, real = step_memory(SMALL, fake=True, **kw), step_memory(SMALL, fake=False, **kw)
    assert fake.activations == real.activations > 0


def test_parameter_counts_and_checkpointing_saving():
    m = step_memory(SMALL, num_frames=9, height=64, width=64, micro_batch=1, text_tokens=32, lora_rank=8,
                    gradient_checkpointing=False)
    # LoRA on q/k/v/o of self- and cross-attention: 8 square 1536 linears per block, r * (in + out) each
    assert m.trainable_params == 8 * (1536 + 1536) * 8 * 2
    ck = step_memory(SMALL, num_frames=9, height=64, width=64, micro_batch=1, text_tokens=32, lora_rank=8,
                     gradient_checkpointing=True)
    assert ck.activations < 0.7 * m.activations and ck.weights == m.weights
    # twice the pairs: activations grow, by less than 2x over the shared constant part (text, timestep)
    m2 = step_memory(SMALL, num_frames=9, height=64, width=64, micro_batch=2, text_tokens=32, lora_rank=8,
                     gradient_checkpointing=False)
    assert 1.5 * m.activations < m2.activations <= 2.0 * m.activations
    assert m.fits(80.0) and not m.fits(m.total * 1.1)  # 15% headroom: 1.1x the total is not enough


def test_global_batch_sets_accumulation():
    assert resolve_grad_accum(64, 2, 8, grad_accum=1) == 4
    assert resolve_grad_accum(None, 2, 8, grad_accum=3) == 3
    with pytest.raises(ConfigError, match="not a multiple of micro-batch 3 x 8 workers = 24"):
        resolve_grad_accum(64, 3, 8, grad_accum=1)


def test_gradient_checkpointing_keeps_loss_and_grads(tiny_model_dir):
    from videoalign_ray.flow.model import add_lora, load_transformer
    from videoalign_ray.flow.train_loop import LoopConfig, compute_loss

    cfg = LoopConfig(model_dir="", objective="dpo", finetune="lora", lora_rank=4, lora_alpha=8.0, objective_args={"beta": 500.0, "beta_schedule": "constant"},
                      t_sampling="uniform", logit_mean=0.0, logit_std=1.0, t_shift=1.0,
                     lr=1e-3, grad_clip=1.0, micro_batch=2, grad_accum=1, zero_stage=0, bf16=False, max_steps=1,
                     checkpoint_every=1, log_every=1, seed=0, mlflow_tracking_uri="", mlflow_run_id="", fault_marker="")
    torch.manual_seed(0)
    batch = {"chosen": torch.randn(2, 3, 2, 8, 8), "rejected": torch.randn(2, 3, 2, 8, 8),
             "prompt_embeds": torch.randn(2, 16, 384)}
    out = []
    for checkpointing in (False, True):
        model = load_transformer(tiny_model_dir)
        add_lora(model, 4, 8.0, seed=0)
        for name, p in model.named_parameters():  # B = 0 at init gives zero grads for A: make both non-trivial
            if "lora_B" in name:
                p.data.normal_(0, 0.02, generator=torch.Generator().manual_seed(hash(name) % 2**31))
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        loss, _ = compute_loss(model, None, batch, cfg, torch.Generator().manual_seed(1), "cpu", torch.float32)
        loss.backward()
        out.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (l0, g0), (l1, g1) = out
    torch.testing.assert_close(l0, l1)
    assert g0.keys() == g1.keys() and any(g.abs().sum() > 0 for g in g0.values())
    for name in g0:
        torch.testing.assert_close(g0[name], g1[name], rtol=1e-5, atol=1e-7)


def test_a_config_that_will_not_fit_is_warned_about(tmp_path, caplog):
    import json

    from videoalign_ray.pipelines.flow_dpo import _check_memory

    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({**SMALL, "_class_name": "WanTransformer3DModel"}))
    logged = {}
    tracker = SimpleNamespace(log_metrics=lambda metrics, step: logged.update(metrics))
    cfg = SimpleNamespace(finetune="lora", zero_stage=2, num_workers=2, gpu_memory_gib=0.1)
    with caplog.at_level(logging.INFO, logger="videoalign_ray.pipelines.flow_dpo"):
        _check_memory(cfg, tmp_path, (9, 64, 64), 1, 8, False, tracker)
    assert logged["memory/predicted_gib"] > 0.1
    assert any(r.levelno == logging.WARNING and "above 85% of --gpu-memory-gib" in r.getMessage() for r in caplog.records)
    caplog.clear()
    cfg.gpu_memory_gib = 80.0
    with caplog.at_level(logging.INFO, logger="videoalign_ray.pipelines.flow_dpo"):
        _check_memory(cfg, tmp_path, (9, 64, 64), 1, 8, True, tracker)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("videoalign_ray")]


def test_the_wan_cluster_config_fits_by_the_model():
    from pathlib import Path

    import yaml

    from videoalign_ray.config import validate_config
    from videoalign_ray.flow.model import PRESETS
    from videoalign_ray.pipelines.flow_dpo import FlowDPOConfig

    values = yaml.safe_load((Path(__file__).resolve().parents[1] / "cluster" / "flow_dpo_wan.yaml").read_text())
    cfg = validate_config(FlowDPOConfig, values)
    preset = PRESETS[cfg.preset]
    assert resolve_grad_accum(cfg.global_batch, cfg.batch_size, cfg.num_workers, cfg.grad_accum) * cfg.batch_size * \
        cfg.num_workers == 64  # the paper's batch
    est = step_memory(WAN21_T2V_1_3B, num_frames=preset.num_frames, height=preset.height, width=preset.width,
                      micro_batch=cfg.batch_size, lora_rank=cfg.lora_rank, gradient_checkpointing=cfg.gradient_checkpointing,
                      zero_stage=cfg.zero_stage, world_size=cfg.num_workers)
    assert est.fits(cfg.gpu_memory_gib), est
