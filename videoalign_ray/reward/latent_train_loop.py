"""Ray Train per-worker loop for the Flow-NRG latent reward model (BT / BTT on noisy latents of pairs).

Both videos of a pair are noised with the SAME ``t`` and ``eps`` (docs/algorithms.md section 3), so the head learns
what separates them at that noise level. ``noise="clean"`` trains at ``t = 0`` only: the paper's ablation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from videoalign_ray.data.schema import DIMENSIONS
from videoalign_ray.flow.clips import common_frames
from videoalign_ray.flow.schedule import add_noise, sample_t
from videoalign_ray.reward.losses import bt_loss, btt_loss
from videoalign_ray.runtime.driver import LoopCommon

DIMS = DIMENSIONS
METRIC_KEYS = ("loss", "batch_acc_VQ", "batch_acc_MQ", "batch_acc_TA")


@dataclass(frozen=True, kw_only=True)
class LatentRewardLoopConfig(LoopCommon):
    """Plain values for the latent-reward workers."""

    model_dir: str
    num_blocks: int
    loss: str  # "btt" | "bt"
    noise: str  # "noisy" | "clean"


def pair_rewards(model, batch: dict, cfg: LatentRewardLoopConfig, gen: torch.Generator, device):
    """``(r_a, r_b, t)``: rewards ``(B, 3)`` of both videos noised with one shared ``t`` ``(B,)`` and ``eps``.

    ``batch``: ``chosen`` (= video A) / ``rejected`` (= video B) latents ``(B, C, F, h, w)``, ``prompt_embeds``.
    ``gen`` draws ``t`` then ``eps``.
    """
    batch = common_frames(batch)  # clips trimmed to different lengths: the micro-batch's shortest
    x_a = batch["chosen"].to(device=device, dtype=torch.float32)
    x_b = batch["rejected"].to(device=device, dtype=torch.float32)
    text = batch["prompt_embeds"].to(device)
    b = x_a.shape[0]
    t = sample_t(b, generator=gen) if cfg.noise == "noisy" else torch.zeros(b)
    eps = torch.randn(x_a.shape, generator=gen).to(device)
    t = t.to(device)
    r = model(torch.cat([add_noise(x_a, eps, t), add_noise(x_b, eps, t)]), torch.cat([t, t]), torch.cat([text, text]))
    return r[:b].float(), r[b:].float(), t


def compute_loss(model, batch: dict, cfg: LatentRewardLoopConfig, gen: torch.Generator, device):
    """Mean over VQ/MQ/TA of the BT(T) loss on one micro-batch; ``labels`` ``(B, 3)`` (+1 A better, -1 B,
    0 tie, -100 unlabelled; BT ignores ties)."""
    r_a, r_b, _ = pair_rewards(model, batch, cfg, gen, device)
    labels = batch["labels"].to(device)
    fn = btt_loss if cfg.loss == "btt" else bt_loss
    losses = [fn(r_a[:, d], r_b[:, d], labels[:, d]) for d in range(3)]
    loss = torch.stack(losses).mean()
    metrics = {"loss": loss.detach()}
    for d, name in enumerate(DIMS):
        decisive = labels[:, d].abs() == 1
        correct = (torch.sign(r_a[:, d] - r_b[:, d]) == labels[:, d].float()) & decisive
        metrics[f"batch_acc_{name}"] = (correct.float().sum() / decisive.float().sum().clamp(min=1)).detach()
    return loss, metrics


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point."""
    import ray.train

    from videoalign_ray.data.cache import cache_loader
    from videoalign_ray.reward.latent import from_generator
    from videoalign_ray.runtime.driver import run_steps
    from videoalign_ray.runtime.placement import worker_device
    from videoalign_ray.runtime.strategy import init_engine

    cfg = LatentRewardLoopConfig(**config)
    world = ray.train.get_context().get_world_size()
    device = worker_device()  # not Ray's get_device(): logical GPUs have no CUDA
    torch.manual_seed(cfg.seed)
    model = from_generator(cfg.model_dir, cfg.num_blocks).train()
    engine = init_engine(model, cfg.deepspeed_config(world))
    run_steps(cfg.driver_spec("latent-reward"), engine, lambda batch, gen: compute_loss(engine, batch, cfg, gen, device),
              METRIC_KEYS, lora=False, adapter_config={"num_blocks": cfg.num_blocks, "base_model": cfg.model_dir},
              load=cache_loader(cfg.cache_dir))


def loop_config_dict(cfg: LatentRewardLoopConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))


@torch.no_grad()
def heldout_accuracy(model, chosen: torch.Tensor, rejected: torch.Tensor, prompt_embeds: torch.Tensor,
                     labels: torch.Tensor, t_values=(0.0, 0.5, 0.9), seed: int = 0, batch: int = 32) -> dict:
    """Accuracy without ties per dimension at fixed noise levels ``t`` (one shared eps per pair).

    Returns ``{"t0.5/VQ": acc, ...}``; pairs whose label is a tie or missing are excluded.
    """
    out = {}
    for tv in t_values:
        g = torch.Generator().manual_seed(seed)
        eps = torch.randn(chosen.shape, generator=g)
        ra, rb = [], []
        for i in range(0, len(chosen), batch):
            s = slice(i, i + batch)
            t = torch.full((len(chosen[s]),), float(tv))
            ra.append(model(add_noise(chosen[s], eps[s], t), t, prompt_embeds[s]).float())
            rb.append(model(add_noise(rejected[s], eps[s], t), t, prompt_embeds[s]).float())
        diff = torch.cat(ra) - torch.cat(rb)
        for d, name in enumerate(DIMS):
            decisive = labels[:, d].abs() == 1
            ok = (torch.sign(diff[:, d]) == labels[:, d].float()) & decisive
            out[f"t{tv:g}/{name}"] = float(ok.float().sum() / decisive.float().sum().clamp(min=1))
    return out
