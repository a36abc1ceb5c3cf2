"""Memory model of one Flow-DPO micro-step: how many GiB a preset, clip size and micro-batch need on a GPU.

The step is the project's own :func:`~videoalign_ray.flow.train_loop.compute_loss` on the real architecture,
run under ``FakeTensorMode`` (shapes and dtypes only: no weights, no arithmetic, seconds on a laptop) while a
dispatch mode counts the bytes of every tensor storage alive at once. On CPU, PyTorch dispatches attention to
its fused flash kernel, which (like flash attention on GPU) keeps O(tokens) state, so the count matches a GPU's
activation memory; at small sizes the fake count equals the count of a real CPU run byte for byte (tested).

What it adds analytically (bytes per parameter, DeepSpeed bf16 mixed precision with ZeRO stage ``z`` over
``world`` ranks): frozen base weights 2; trainable parameters 2 (bf16 weights) + 2 (bf16 grads) + 12 (fp32
master + Adam m, v), the 12 (and at ``z >= 2`` the grads) divided by ``world``. Not counted: the CUDA context
and NCCL buffers (~1-2 GiB, inside the headroom) and allocator fragmentation.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GIB = 2**30

# The published diffusers config of Wan2.1-T2V-1.3B's transformer (Wan-AI/Wan2.1-T2V-1.3B-Diffusers).
WAN21_T2V_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, rope_max_seq_len=1024,
)
VAE_TEMPORAL, VAE_SPATIAL, LATENT_CHANNELS = 4, 8, 16  # Wan2.1's VAE: 81 frames x 480 x 832 -> 16 x 21 x 60 x 104


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of tensor storages created inside the mode and still alive; ``peak`` is the maximum.

    Storages that exist before (weights, inputs) are registered with :meth:`ignore` so that views of them
    (a transposed weight) are not counted as new memory.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def ignore(self, tensors) -> None:
        for t in tensors:
            self.live[t.untyped_storage()._cdata] = 0

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    weakref.finalize(storage, self._release, key)
        self.peak = max(self.peak, self.current)
        return out


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``; returns (a, b) (the memory models' fits of bytes against tokens)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def latent_size(num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Wan2.1 VAE latent (frames, h, w) of a clip of ``num_frames`` x ``height`` x ``width`` pixels."""
    return (num_frames - 1) // VAE_TEMPORAL + 1, height // VAE_SPATIAL, width // VAE_SPATIAL


def tokens_per_video(config: dict, num_frames: int, height: int, width: int) -> int:
    """Transformer tokens of one clip: latent frames x h x w over the patch size (81x480x832 -> 32,760)."""
    f, h, w = latent_size(num_frames, height, width)
    pt, ph, pw = config["patch_size"]
    return (f // pt) * (h // ph) * (w // pw)


@dataclass(frozen=True)
class StepMemory:
    """GiB of one Flow-DPO micro-step on one rank: ``weights`` (frozen base), ``trainable`` (trainable weights,
    grads and optimizer states), ``activations`` (peak of the step's live tensors), ``total`` (their sum)."""

    weights: float
    trainable: float
    activations: float
    params: int
    trainable_params: int
    tokens_per_video: int

    @property
    def total(self) -> float:
        return self.weights + self.trainable + self.activations

    def fits(self, gpu_gib: float, headroom: float = 0.15) -> bool:
        """Whether ``total`` leaves ``headroom`` (a fraction) of ``gpu_gib`` free."""
        return self.total <= gpu_gib * (1.0 - headroom)


def _build(cls, config: dict, lora_rank: int | None):
    """The transformer in bf16 with the project's LoRA (or all weights trainable)."""
    from videoalign_ray.flow.model import add_lora

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = cls(**config)
        if lora_rank:
            add_lora(model, lora_rank, 2.0 * lora_rank, seed=0)
        else:
            model.requires_grad_(True)
    finally:
        torch.set_default_dtype(previous)
    return model


def dpo_step_config(micro_batch: int, lora_rank: int | None, zero_stage: int = 2):
    """The LoopConfig of one bf16 Flow-DPO micro-step with the paper's beta (only the step's shape matters)."""
    from videoalign_ray.flow.train_loop import LoopConfig

    return LoopConfig(model_dir="", objective="dpo", finetune="lora" if lora_rank else "full", lora_rank=lora_rank or 0,
                      lora_alpha=2.0 * (lora_rank or 0), objective_args={"beta": 500.0, "beta_schedule": "constant"},  t_sampling="uniform",
                      logit_mean=0.0, logit_std=1.0, t_shift=1.0, lr=1e-5, grad_clip=1.0, micro_batch=micro_batch,
                      grad_accum=1, zero_stage=zero_stage, bf16=True, max_steps=1, checkpoint_every=1, log_every=1,
                      seed=0, mlflow_tracking_uri="", mlflow_run_id="", fault_marker="")


def step_memory(config: dict, *, num_frames: int, height: int, width: int, micro_batch: int, text_tokens: int = 512,
                lora_rank: int | None = 64, gradient_checkpointing: bool = True, zero_stage: int = 2,
                world_size: int = 8, fake: bool = True) -> StepMemory:
    """The memory of one Flow-DPO micro-step (``micro_batch`` pairs: both videos through the reference without
    grad, then through the policy with grad) on the transformer ``config`` (a diffusers Wan config dict).

    ``fake=False`` runs the same step for real on CPU (only for small sizes: the equality test). Raises
    ValueError for a clip whose latent does not divide by the patch size.
    """
    from diffusers import WanTransformer3DModel

    from videoalign_ray.flow.train_loop import compute_loss

    f, h, w = latent_size(num_frames, height, width)
    if h % config["patch_size"][1] or w % config["patch_size"][2]:
        raise ValueError(f"latent {f}x{h}x{w} of {num_frames}x{height}x{width} does not divide by the patch size")
    # built on the meta device (no memory, no init), then every weight is swapped for an empty tensor of the
    # same shape: a fake one under FakeTensorMode (peft's dtype casts cannot run on fake modules directly)
    with torch.device("meta"):
        model = _build(WanTransformer3DModel, config, lora_rank)
    mode = contextlib.nullcontext()
    if fake:
        from torch._subclasses.fake_tensor import FakeTensorMode

        mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        for module in model.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                module._parameters[name] = torch.nn.Parameter(torch.zeros(p.shape, dtype=p.dtype), p.requires_grad)
            for name, b in list(module.named_buffers(recurse=False)):
                module._buffers[name] = torch.zeros(b.shape, dtype=b.dtype)
        params = sum(p.numel() for p in model.parameters() if not p.requires_grad or not lora_rank)
        if gradient_checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        channels = config.get("in_channels", LATENT_CHANNELS)
        batch = {"chosen": torch.randn(micro_batch, channels, f, h, w),
                 "rejected": torch.randn(micro_batch, channels, f, h, w),
                 "prompt_embeds": torch.randn(micro_batch, text_tokens, config["text_dim"], dtype=torch.bfloat16)}
        cfg = dpo_step_config(micro_batch, lora_rank, zero_stage)
        tracker = LiveTensorBytes()
        tracker.ignore([*model.parameters(), *model.buffers(), *batch.values()])
        with tracker:
            # full fine-tuning: the reference is a frozen copy (its no-grad pass stores the same as the same
            # network would; its weights are added below)
            reference = None if lora_rank else model
            loss, _ = compute_loss(model, reference, batch, cfg, torch.Generator().manual_seed(0), "cpu",
                                   torch.bfloat16)
            loss.backward()
    frozen = params if lora_rank else trainable  # LoRA: the base; full: the reference copy
    optimizer_div = world_size if zero_stage >= 1 else 1
    grad_div = world_size if zero_stage >= 2 else 1
    trainable_bytes = trainable * (2 + 2 / grad_div + 12 / optimizer_div)
    return StepMemory(weights=frozen * 2 / GIB, trainable=trainable_bytes / GIB, activations=tracker.peak / GIB,
                      params=params + (trainable if lora_rank else 0), trainable_params=trainable,
                      tokens_per_video=tokens_per_video(config, num_frames, height, width))
