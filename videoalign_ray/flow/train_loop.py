"""The Ray Train per-worker loop for flow-matching alignment: every offline objective (Flow-DPO, Flow-RWR, SFT,
pre-training; :mod:`videoalign_ray.flow.objectives`) in one loop, the objective chosen by name.

Each worker reads its own pre-split shard (``get_dataset_shard(f"shard_{rank}")``) of key rows and loads the
latents of its micro-batches from the cache (``cache_dir``; prefetched on a thread), so the pairs a rank
sees are fixed by the seed and the data: a resumed run replays exactly the batches an uninterrupted run
would have seen. Noise and timesteps come from a generator seeded by (seed, step, rank) for the same reason.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch

from videoalign_ray.flow.objectives.base import LossContext
from videoalign_ray.flow.objectives.registry import get_objective
from videoalign_ray.runtime.driver import LoopCommon


@dataclass(frozen=True, kw_only=True)
class LoopConfig(LoopCommon):
    """Everything a Flow-DPO / SFT / pre-training worker needs; plain values so it crosses processes as a dict."""

    model_dir: str
    objective: str  # a registered objective's name (flow/objectives/registry.py)
    finetune: str  # "lora" | "full"
    lora_rank: int
    lora_alpha: float
    t_sampling: str
    logit_mean: float
    logit_std: float
    t_shift: float
    objective_args: dict = field(default_factory=dict)  # the objective's section values (Objective.args)
    init_adapter: str | None = None  # an adapter/ folder the LoRA starts from (online rounds); None: B = 0
    reference_adapter: str | None = None  # DPO reference = base + this adapter (merged, frozen copy); None: base
    val_pairs: int = 0  # validation pairs in the "val" dataset (0: no held-out evaluation)
    val_prompts: tuple[str, ...] = ()  # prompts sampled (reference vs policy) at each sample evaluation
    val_sample_every: int = 0  # steps between validation samples (0: none)
    sample_steps: int = 20
    sample_shift: float | None = None
    sampler: str = "auto"
    negative_prompt: str = ""
    cfg_scale: float = 1.0
    max_text_tokens: int = 16
    fps: int = 8


def _build_model(cfg: LoopConfig):
    from videoalign_ray.flow.model import add_lora, load_transformer

    torch.manual_seed(cfg.seed)
    policy = load_transformer(cfg.model_dir)
    reference = None
    if cfg.finetune == "lora":
        add_lora(policy, cfg.lora_rank, cfg.lora_alpha, cfg.seed)
        if cfg.init_adapter:
            _load_init_adapter(policy, cfg)
    elif get_objective(cfg.objective).uses_reference:  # full fine-tuning: a frozen copy is the reference
        reference = load_transformer(cfg.model_dir).eval().requires_grad_(False)
    if cfg.reference_adapter and get_objective(cfg.objective).uses_reference:
        # reference = an earlier policy (online --reference previous): a frozen copy of the base with that
        # adapter folded in; costs one more copy of the base weights in the compute dtype.
        from pathlib import Path

        from videoalign_ray.flow.lora_export import read_adapter_state
        from videoalign_ray.flow.model import merge_lora

        if reference is None:
            reference = load_transformer(cfg.model_dir).eval().requires_grad_(False)
        state, rank, alpha = read_adapter_state(Path(cfg.reference_adapter))
        merge_lora(reference, state, rank, alpha)
    if cfg.gradient_checkpointing:  # the no-grad reference pass stores nothing, so only the policy needs it
        policy.enable_gradient_checkpointing()
    policy.train()
    return policy, reference


def compute_loss(engine, reference, batch: dict, cfg: LoopConfig, gen: torch.Generator, device, dtype):
    """One micro-batch of ``cfg.objective``'s loss: ``(scalar loss, detached metrics)``.

    ``engine`` is the DeepSpeed engine (or the bare model); ``reference`` a frozen copy, or None for LoRA,
    where the reference is the same network with its adapters disabled. ``batch``: the objective's columns
    (``chosen`` / ``rejected`` latents ``(B, C, F, h, w)``, ``prompt_embeds`` ``(B, L, D)``, RWR's
    ``reward_chosen`` / ``reward_rejected`` ``(B,)``); ``gen`` draws the micro-batch's timesteps and noise.
    """
    ctx = LossContext(engine=engine, reference=reference, loop=cfg, args=cfg.objective_args, device=device,
                      dtype=dtype)
    return get_objective(cfg.objective).loss(ctx, batch, gen)


def _load_init_adapter(policy, cfg: LoopConfig) -> None:
    """Start the LoRA from a trained adapter (same rank and alpha). A resumed run then loads its own checkpoint
    over it. Raises ValueError on a rank/alpha mismatch or keys the model lacks."""
    from pathlib import Path

    from peft.utils import set_peft_model_state_dict

    from videoalign_ray.flow.lora_export import read_adapter_state

    state, rank, alpha = read_adapter_state(Path(cfg.init_adapter))
    if (rank, alpha) != (cfg.lora_rank, cfg.lora_alpha):
        raise ValueError(f"{cfg.init_adapter}: adapter r={rank}, alpha={alpha}; this run trains r={cfg.lora_rank}, "
                         f"alpha={cfg.lora_alpha}")
    result = set_peft_model_state_dict(policy, state)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{cfg.init_adapter}: keys the model lacks: {result.unexpected_keys[:5]}")


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point (``TorchTrainer(train_loop_per_worker=...)``)."""
    import ray.train

    from videoalign_ray.data.cache import cache_loader
    from videoalign_ray.flow.model import cast_parameters
    from videoalign_ray.runtime.driver import run_steps
    from videoalign_ray.runtime.placement import worker_device
    from videoalign_ray.runtime.strategy import init_engine

    cfg = LoopConfig(**config)
    world = ray.train.get_context().get_world_size()
    device = worker_device()  # not Ray's get_device(): logical GPUs have no CUDA
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    policy, reference = _build_model(cfg)
    if reference is not None:  # the precision layout the policy's engine gets: parameters bf16, buffers float32
        cast_parameters(reference, dtype).to(device)
    engine = init_engine(policy, cfg.deepspeed_config(world))

    def loss_fn(batch, gen):
        return compute_loss(engine, reference, batch, cfg, gen, device, dtype)

    run_steps(
        cfg.driver_spec(cfg.objective), engine, loss_fn, get_objective(cfg.objective).metric_keys, lora=cfg.finetune == "lora",
        adapter_config={"r": cfg.lora_rank, "lora_alpha": cfg.lora_alpha, "finetune": cfg.finetune,
                        "base_model": cfg.model_dir},
        validate_fn=_make_validate(cfg, engine, reference, loss_fn, device) if cfg.val_pairs else None,
        load=cache_loader(cfg.cache_dir),  # key rows -> latents and prompt embeddings, prefetched
    )


def _make_validate(cfg: LoopConfig, engine, reference, loss_fn, device):
    """``validate(step) -> {"val/<metric>": mean over the validation pairs}`` (all ranks), which also renders
    validation samples every ``val_sample_every`` steps (:class:`_ValidationSamples`)."""
    import math

    import ray.train
    import torch.distributed as dist

    from videoalign_ray.data.cache import TensorCache, load_row
    from videoalign_ray.flow.validation import heldout_metrics
    from videoalign_ray.runtime.key_table import dataset_shard

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cache = TensorCache(cfg.cache_dir)
    keyed = list(dataset_shard("val").iter_rows())
    rows = [load_row(r, cache) for i, r in enumerate(keyed) if i % world == rank]
    padding = rows or [load_row(keyed[0], cache)]
    num_batches = math.ceil(math.ceil(len(keyed) / world) / cfg.micro_batch)
    keys = get_objective(cfg.objective).metric_keys
    module = getattr(engine, "module", engine)
    # ZeRO-3 partitions the weights: every rank must run the sampler's forwards; otherwise rank 0 alone samples
    samples = (_ValidationSamples(cfg, device, tuple(padding[0]["chosen"].shape), write=rank == 0)
               if cfg.val_sample_every and cfg.val_prompts and (rank == 0 or cfg.zero_stage == 3) else None)

    def validate(step: int) -> dict[str, float]:
        module.eval()
        try:
            sums, n = heldout_metrics(loss_fn, rows, cfg.micro_batch, cfg.seed, keys, num_batches=num_batches,
                                      padding=padding)
        finally:
            module.train()
        vec = torch.tensor([*sums.values(), float(n)], dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            vec = vec.to("cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(vec)
            vec = vec.cpu()
        metrics = {f"val/{k}": float(v / max(vec[-1].item(), 1.0)) for k, v in zip(keys, vec[:-1], strict=True)}
        if samples is not None and (step % cfg.val_sample_every == 0 or step == cfg.max_steps):
            samples.render(step, module, reference)
        return metrics

    return validate


class _ValidationSamples:
    """Reference-vs-policy samples of ``cfg.val_prompts`` (the same noise at every evaluation), logged to
    MLflow under ``validation/step_NNNNNN/`` as mp4s and one contact sheet (prompt and step written on it).
    The text encoder and VAE load on first use, on the worker's device."""

    def __init__(self, cfg: LoopConfig, device, latent_shape: tuple[int, ...], write: bool):
        self.cfg, self.device, self.latent_shape, self.write = cfg, device, latent_shape, write
        self._loaded = None

    def _load(self):
        from videoalign_ray.flow.model import TextEncoder, load_vae

        if self._loaded is None:
            text = TextEncoder(self.cfg.model_dir, self.cfg.max_text_tokens, device=str(self.device))
            prompts = list(self.cfg.val_prompts)
            negative = self._sampling().negative_embeds(text, len(prompts))
            self._loaded = (text.encode(prompts), negative, load_vae(self.cfg.model_dir).to(self.device))
            del text
        return self._loaded

    def _sampling(self):
        from videoalign_ray.flow.sampling import SamplingSettings

        return SamplingSettings.of(self.cfg)

    def render(self, step: int, module, reference) -> None:
        import tempfile
        from pathlib import Path

        from videoalign_ray.data.contact_sheet import contact_sheet
        from videoalign_ray.data.encode import write_mp4
        from videoalign_ray.flow.model import cast_parameters, load_transformer
        from videoalign_ray.flow.validation import sample_pairs
        from videoalign_ray.runtime.tracking import Tracker

        embeds, negative, vae = self._load()
        if reference is None and self.cfg.finetune != "lora":  # full SFT / RWR: the base, loaded once
            if getattr(self, "_base", None) is None:
                dtype = getattr(module, "dtype", torch.float32)  # the policy's compute dtype (DeepSpeed: all params)
                self._base = cast_parameters(load_transformer(self.cfg.model_dir).eval(), dtype).to(self.device)
            reference = self._base
        ref, pol = sample_pairs(module, reference, vae, embeds, self.latent_shape, seed=self.cfg.seed,
                                negative_embeds=negative, **self._sampling().kwargs(self.cfg.model_dir))
        if not self.write:
            return
        tracker = Tracker.attach(self.cfg.mlflow_tracking_uri, self.cfg.mlflow_run_id)
        name = f"step_{step:06d}"
        with tempfile.TemporaryDirectory(prefix="va-val-") as tmp:
            folder = Path(tmp) / name
            rows = []
            for i, prompt in enumerate(self.cfg.val_prompts):
                write_mp4(folder / f"{i:02d}_reference.mp4", ref[i], fps=self.cfg.fps)
                write_mp4(folder / f"{i:02d}_policy.mp4", pol[i], fps=self.cfg.fps)
                rows.append((f"{i}: {prompt}  (left: reference, right: policy)", [ref[i], pol[i]]))
            contact_sheet(rows, f"validation samples, step {step}").save(folder / "contact_sheet.png")
            tracker.log_artifact(folder, f"validation/{name}")


def loop_config_dict(cfg: LoopConfig) -> dict:
    """The dict form passed to ``TorchTrainer(train_loop_config=...)``."""
    return json.loads(json.dumps(asdict(cfg)))
