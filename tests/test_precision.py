"""Precision of full fine-tuning in bf16: the frozen reference gets the precision layout DeepSpeed's bf16 engine
gives the policy (parameters bf16, buffers as loaded: Wan's RoPE frequencies float32), so at step 0 policy and
reference compute the same and the Flow-DPO loss is log 2. (DeepSpeed keeps only *buffers* in float32: its
``data_types.keep_in_fp32_modules`` does not apply to parameters, so diffusers' ``_keep_in_fp32_modules``
parameters train in bf16 in the policy, and the reference follows the policy.)"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

from videoalign_ray.flow.model import TINY_WORLD_ASSET

SCRIPT = textwrap.dedent("""
    import json, math, sys
    import torch, torch.distributed as dist
    from videoalign_ray.flow.model import load_transformer
    from videoalign_ray.flow.train_loop import LoopConfig, _build_model, compute_loss
    from videoalign_ray.flow.model import cast_parameters
    from videoalign_ray.runtime.strategy import init_engine

    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=0, world_size=1)
    cfg = LoopConfig(model_dir=sys.argv[1], objective="dpo", finetune="full", lora_rank=4, lora_alpha=8.0,
                     lr=1e-3, weight_decay=0.0, grad_clip=1.0, objective_args={"beta": 500.0, "beta_schedule": "constant"}, 
                     t_sampling="uniform", logit_mean=0.0, logit_std=1.0, t_shift=1.0, micro_batch=2, grad_accum=1,
                     zero_stage=0, bf16=True, max_steps=1, checkpoint_every=1, log_every=1, seed=0,
                     mlflow_tracking_uri="", mlflow_run_id="", fault_marker="")
    policy, reference = _build_model(cfg)
    cast_parameters(reference, torch.bfloat16)
    engine = init_engine(policy, cfg.deepspeed_config(1))
    g = torch.Generator().manual_seed(3)
    batch = {"chosen": torch.randn(2, 3, 5, 32, 32, generator=g), "rejected": torch.randn(2, 3, 5, 32, 32, generator=g),
             "prompt_embeds": torch.randn(2, 16, 384, generator=g)}
    out = {}
    with torch.no_grad():
        loss, _ = compute_loss(engine, reference, batch, cfg, torch.Generator().manual_seed(0), "cpu", torch.bfloat16)
        out["loss"] = loss.item()
        whole = load_transformer(sys.argv[1]).eval().to(torch.bfloat16)  # the old reference: all of it bf16
        loss, _ = compute_loss(engine, whole, batch, cfg, torch.Generator().manual_seed(0), "cpu", torch.bfloat16)
        out["loss_whole_bf16_reference"] = loss.item()
    out["policy"] = {n: str(t.dtype) for n, t in [*engine.module.named_parameters(), *engine.module.named_buffers()]}
    out["reference"] = {n: str(t.dtype) for n, t in [*reference.named_parameters(), *reference.named_buffers()]}
    print("RESULT " + json.dumps(out))
""")


def test_full_finetune_bf16_step0_loss_is_log2():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(TINY_WORLD_ASSET), str(port)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert abs(out["loss"] - math.log(2)) < 1e-3, out["loss"]
    assert out["policy"] == out["reference"]  # the same dtype, tensor by tensor
    assert {d for n, d in out["reference"].items() if "rope" in n} == {"torch.float32"}  # RoPE frequencies kept
    # the old reference (all of it bf16, RoPE frequencies too) does not agree with the policy at step 0
    assert abs(out["loss_whole_bf16_reference"] - math.log(2)) > 1e-3
    print("step-0 loss", out["loss"], "with an all-bf16 reference", out["loss_whole_bf16_reference"])
