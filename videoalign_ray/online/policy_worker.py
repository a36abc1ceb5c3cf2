"""A colocated policy worker of the online loop: one Ray actor per GPU that both samples and trains.

The worker holds the generator (transformer with its LoRA policy adapter, VAE, text encoder) for the whole
job. A round is two calls: :meth:`PolicyWorker.sample` draws K videos per prompt group with the *current*
weights in place (SDE steps with log-probabilities in Flow-GRPO's window, ODE elsewhere), writes the mp4s and
group records, and keeps the trajectories in memory; :meth:`PolicyWorker.train` runs the objective on them
with the advantages the driver computed, gradients averaged over the workers' process group (gloo on CPU, NCCL
on CUDA) before every optimizer step, so every worker keeps the same weights and no weight copy ever moves.
The LoRA weights and their AdamW state are small: plain data parallelism, no ZeRO partitioning.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class PolicySpec:
    """What every worker loads and how it samples and trains (plain values: crosses processes).

    Clip size: ``num_frames`` x ``height`` x ``width`` pixels at ``fps``. Sampling: ``sample_steps`` on the
    shifted Euler schedule (``sample_shift``), SDE noise level and loss knobs in ``objective_args`` (the
    objective's section). Training: LoRA ``lora_rank`` / ``lora_alpha`` (A drawn with ``seed``: identical on
    every worker), AdamW ``lr`` / ``weight_decay``, gradient-norm clip ``grad_clip``, ``micro_batch`` samples per
    forward (pairs, for Flow-DPO).
    """

    model_dir: str
    samples_dir: str
    max_text_tokens: int
    num_frames: int
    height: int
    width: int
    fps: int
    objective: str = "grpo"
    objective_args: dict = field(default_factory=dict)
    sample_steps: int = 8
    sample_shift: float = 1.0
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    micro_batch: int = 4
    seed: int = 0
    loop: dict = field(default_factory=lambda: {"t_sampling": "uniform", "logit_mean": 0.0, "logit_std": 1.0,
                                                "t_shift": 1.0})
    """Training-timestep knobs for objectives that draw ``t`` (Flow-DPO)."""
    fail_on_round: int | None = None
    """Test hook: in this round the last-ranked worker exits at its first task, once (``fault_marker`` records it)."""
    fault_marker: str | None = None
    encode: Any = None
    """An :class:`~videoalign_ray.flow.pipeline.EncodeSpec`: the samples' latents go into its latent cache under
    the keys a Flow-DPO job on the written mp4s looks up (``latent_key`` in the records); None: not cached."""


def group_record_path(samples_dir: str | Path, round_: int, prompt_index: int) -> Path:
    """``<samples_dir>/round-NNN/pNNNN.json``: the record of one prompt group."""
    return Path(samples_dir) / f"round-{round_:03d}" / f"p{prompt_index:04d}.json"


class PolicyWorker:
    """Ray actor (``ray.remote(PolicyWorker)``, one per placement-group bundle): see the module docstring."""

    def __init__(self, spec: PolicySpec, rank: int, world: int):
        from videoalign_ray.flow.generator import load_generator
        from videoalign_ray.flow.model import add_lora
        from videoalign_ray.flow.objectives.registry import get_objective

        self.spec, self.rank, self.world = spec, rank, world
        models = load_generator(spec.model_dir, max_text_tokens=spec.max_text_tokens)
        self.device, self.dtype = models.device, models.dtype
        self.transformer, self.vae, self.text = models.transformer, models.vae, models.text
        add_lora(self.transformer, spec.lora_rank, spec.lora_alpha, seed=spec.seed)
        self.params = [p for p in self.transformer.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=spec.lr, weight_decay=spec.weight_decay)
        self.objective = get_objective(spec.objective)
        self.held: dict[int, dict] = {}  # prompt index -> trajectory and prompt embeddings of this round
        self.version = 0
        self.busy_s = 0.0  # seconds spent sampling or training (the rest of the job's time this GPU idles)

    # ---- process group ---------------------------------------------------------------------------
    def address(self) -> tuple[str, int]:
        """(node IP, a free TCP port) for the process group's rendezvous (asked of rank 0)."""
        import socket

        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def init_group(self, addr: str, port: int, timeout_s: float) -> dict:
        """Join the workers' process group (NCCL on CUDA, else gloo); returns :func:`worker_info` plus backend."""
        from datetime import timedelta

        import torch.distributed as dist

        from videoalign_ray.runtime.placement import worker_info

        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if self.world > 1:
            dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=self.rank,
                                    world_size=self.world, timeout=timedelta(seconds=timeout_s))
        return {**worker_info(), "backend": backend, "rank": self.rank}

    # ---- weights ---------------------------------------------------------------------------------
    def load_state(self, version: int, adapter: dict | None, optimizer: dict | None) -> int:
        """Load policy ``version``: LoRA ``adapter`` state (peft keys, float32) and the AdamW state, or the
        fresh adapter (version 0). Returns the version."""
        from peft.utils import set_peft_model_state_dict

        if adapter is not None:
            result = set_peft_model_state_dict(self.transformer, {k: v.to(self.device) for k, v in adapter.items()})
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"adapter has keys the model lacks: {result.unexpected_keys[:5]}")
        if optimizer is not None:
            self.optimizer.load_state_dict(optimizer)
        self.version = version
        return version

    def state(self) -> dict:
        """``{"adapter": peft state (CPU float32), "optimizer": AdamW state dict (tensors on CPU), "version": v}``."""
        from peft.utils import get_peft_model_state_dict

        adapter = {k: v.detach().float().cpu().clone() for k, v in get_peft_model_state_dict(self.transformer).items()}
        opt = self.optimizer.state_dict()  # on CPU: the driver (no GPU) receives it; load_state_dict moves it back
        opt["state"] = {i: {k: v.detach().cpu().clone() if torch.is_tensor(v) else v for k, v in st.items()}
                        for i, st in opt["state"].items()}
        return {"adapter": adapter, "optimizer": opt, "version": self.version}

    # ---- sample ----------------------------------------------------------------------------------
    def sample(self, round_: int, tasks: list[dict], sde_steps: tuple[int, ...]) -> list[dict]:
        """Sample each task's prompt group and write its files; returns the group records (no tensors).

        ``task``: ``{prompt_index, prompt, seeds (K noise seeds), sde_seed, scene (world scene dict or None)}``.
        The mp4s and ``pNNNN.json`` land in ``samples_dir/round-NNN/``; the record is written last.
        """
        from videoalign_ray.data.encode import write_mp4
        from videoalign_ray.flow.model import decode_latents
        from videoalign_ray.flow.objectives.base import velocity
        from videoalign_ray.flow.sampling import latent_shape
        from videoalign_ray.flow.schedule import euler_timesteps
        from videoalign_ray.flow.sde import sde_sample
        from videoalign_ray.runtime.fileio import write_text_atomic

        start, spec = time.monotonic(), self.spec
        self.transformer.eval()
        timesteps = euler_timesteps(spec.sample_steps, spec.sample_shift)
        shape = latent_shape(self.vae.config, spec.num_frames, spec.height, spec.width)
        self._maybe_fail(round_)
        records = []
        cfg_scale = float(spec.objective_args.get("cfg_scale", 1.0))  # CFG while sampling (the loss uses the same)
        for task in tasks:
            idx, seeds = task["prompt_index"], task["seeds"]
            noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
            with torch.no_grad():
                embeds = self.text.encode([task["prompt"]] * len(seeds)).to(self.device, self.dtype)
                negative = (self.text.encode([""] * len(seeds)).to(self.device, self.dtype) if cfg_scale > 1 else None)

                def policy_velocity(x, t, e=embeds, n=negative):  # the objective's loss computes it the same way
                    xi, ti = x.to(self.dtype), t.to(self.dtype)
                    v = velocity(self.transformer, xi, ti, e).float()
                    if n is not None:
                        v_neg = velocity(self.transformer, xi, ti, n).float()
                        v = v_neg + cfg_scale * (v - v_neg)
                    return v

                traj = sde_sample(policy_velocity, noise.to(self.device), timesteps, sde_steps=sde_steps,
                                  noise_level=spec.objective_args.get("noise_level", 0.7),
                                  generator=torch.Generator().manual_seed(task["sde_seed"]))
                videos = decode_latents(self.vae, traj.final)
            self.held[idx] = {"trajectory": traj, "prompt_embeds": embeds.cpu(), "t_max": float(timesteps[1]),
                              "negative_embeds": negative.cpu() if negative is not None else None}
            folder = group_record_path(spec.samples_dir, round_, idx).parent
            samples = []
            for k, (seed, video) in enumerate(zip(seeds, videos, strict=True)):
                path = write_mp4(folder / f"p{idx:04d}_s{k:02d}.mp4", video, fps=spec.fps)
                sample = {"sample": k, "seed": seed, "path": str(path),
                          "log_prob_sum": float(sum(lp[k] for lp in traj.log_probs))}
                if spec.encode is not None:  # the Flow-DPO job's key: a retraining on pairs/ finds the latents
                    sample["latent_key"] = self._cache_latents(str(path), traj.final[k], task["prompt"], embeds[k])
                if task.get("scene"):
                    from videoalign_ray.synthetic.scorers import score_video
                    from videoalign_ray.synthetic.world import Scene

                    sample["ground_truth"] = score_video(video, Scene(**task["scene"]))
                samples.append(sample)
            record = {"round": round_, "prompt_index": idx, "prompt": task["prompt"], "seeds": list(seeds),
                      "sde_seed": task["sde_seed"], "sde_steps": list(sde_steps), "policy_version": self.version,
                      "worker": {"rank": self.rank, "pid": os.getpid()}, "samples": samples}
            write_text_atomic(group_record_path(spec.samples_dir, round_, idx), json.dumps(record, indent=1))
            records.append(record)
        self.busy_s += time.monotonic() - start
        return records

    def _cache_latents(self, path: str, latents: torch.Tensor, prompt: str, embeds: torch.Tensor) -> str:
        """Put one sample's latents (and its prompt's embeddings) in the encode spec's cache; returns the key."""
        from videoalign_ray.data.cache import TensorCache, prompt_key, put_unpadded

        enc = self.spec.encode
        cache = TensorCache(enc.cache_dir)
        key = enc.video_key(path)
        cache.put(key, latents.to(getattr(torch, enc.latent_dtype)))
        put_unpadded(cache, prompt_key(prompt, enc.text_encoder_id, enc.max_text_tokens), embeds.float().cpu())
        return key

    # ---- train -----------------------------------------------------------------------------------
    def train(self, version: int, items: dict, updates: int) -> dict:
        """``updates`` optimizer steps of the objective on this round's samples; ``items``: per prompt index the
        driver's training items (Flow-GRPO: the K advantages; Flow-DPO: (chosen, rejected) sample pairs), turned
        into micro-batches by the objective's ``online_batches``. With at least ``updates`` micro-batches each
        step takes its share once (the first step exactly on-policy); with fewer, each step takes the next one in
        turn (several passes). Gradients are averaged over the workers before every step (a worker with nothing
        to train joins with zeros); the held samples are dropped. Returns mean metrics over this worker's
        micro-batches, ``micro_batches`` and ``busy_s`` (this worker's total so far).
        """
        import types

        import torch.distributed as dist

        from videoalign_ray.flow.objectives.base import LossContext
        from videoalign_ray.runtime.driver import step_generator

        start = time.monotonic()
        rows = self.objective.online_batches(self.held, items, self.spec.micro_batch)
        ctx = LossContext(engine=self.transformer, reference=None, loop=types.SimpleNamespace(**self.spec.loop),
                          args=self.spec.objective_args, device=self.device, dtype=self.dtype)
        if len(rows) >= updates:
            chunks = [rows[u::updates] for u in range(updates)]
        else:
            chunks = [[rows[u % len(rows)]] if rows else [] for u in range(updates)]
        sums: dict[str, float] = {}
        self.transformer.train()
        for u, chunk in enumerate(chunks):
            self.optimizer.zero_grad(set_to_none=False)
            for i, batch in enumerate(chunk):
                gen = step_generator(self.spec.seed, version * 100_000 + u * 1000 + i, self.rank)
                loss, metrics = self.objective.loss(ctx, batch, gen)
                (loss / len(chunk)).backward()
                for key, v in metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(v)
            for p in self.params:  # a worker without rows this update still joins the all-reduce with zeros
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            if self.world > 1:  # every worker reaches this once per update: the same number of all-reduces
                for p in self.params:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
            torch.nn.utils.clip_grad_norm_(self.params, self.spec.grad_clip)
            self.optimizer.step()
        self.transformer.eval()
        self.held.clear()
        self.version = version
        self.busy_s += time.monotonic() - start
        n = max(sum(len(c) for c in chunks), 1)
        return {**{k: v / n for k, v in sums.items()}, "micro_batches": sum(len(c) for c in chunks),
                "busy_s": self.busy_s}

    def _maybe_fail(self, round_: int) -> None:
        if (self.spec.fail_on_round != round_ or self.rank != self.world - 1 or not self.spec.fault_marker
                or Path(self.spec.fault_marker).exists()):
            return
        Path(self.spec.fault_marker).write_text(f"worker {self.rank} (pid {os.getpid()}) exited in round {round_}\n")
        os._exit(1)

    def busy_seconds(self) -> float:
        """Seconds this worker has spent sampling or training."""
        return self.busy_s
