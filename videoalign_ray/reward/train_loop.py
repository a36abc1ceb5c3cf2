"""Ray Train per-worker loop for VideoReward (BTT / BT on preference pairs), on the shared step driver."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch

from videoalign_ray.data.schema import DIMENSIONS
from videoalign_ray.reward.losses import bt_loss, btt_loss
from videoalign_ray.reward.metrics import accuracy_without_ties, tie_aware_accuracy
from videoalign_ray.runtime.driver import LoopCommon
from videoalign_ray.runtime.key_table import dataset_shard

DIMS = DIMENSIONS
METRIC_KEYS = ("loss", "batch_acc_VQ", "batch_acc_MQ", "batch_acc_TA")


@dataclass(frozen=True, kw_only=True)
class RewardLoopConfig(LoopCommon):
    """Plain values for the VideoReward workers."""

    tokenizer_dir: str
    model_path: str | None
    output_dim: int
    reward_token: str
    loss: str  # "btt" | "bt"
    lm_training: str  # "full" | "lora"
    lora_rank: int
    lora_alpha: float


def build_reward_model(tokenizer_dir: str, model_path: str | None, output_dim: int, reward_token: str, seed: int,
                       lm_training: str = "full", lora_rank: int = 64, lora_alpha: float = 128.0):
    """(VideoRewardModel, VideoRewardProcessor): tiny random init (``model_path=None``) or a local
    Qwen2-VL folder; ``lm_training="lora"`` applies the paper's recipe (LoRA on the LM's linear layers,
    vision tower and merger trained, only the new token rows of the embedding trained)."""
    from transformers import Qwen2VLForConditionalGeneration

    from videoalign_ray.reward.model import VideoRewardModel, apply_lora_recipe, tiny_qwen2vl_config
    from videoalign_ray.reward.processor import VideoRewardProcessor, load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    proc = VideoRewardProcessor(tok)
    torch.manual_seed(seed)
    if model_path:
        backbone = Qwen2VLForConditionalGeneration.from_pretrained(model_path, torch_dtype=torch.float32)
        backbone.resize_token_embeddings(len(tok))
    else:
        backbone = Qwen2VLForConditionalGeneration(tiny_qwen2vl_config(tok))
    model = VideoRewardModel(backbone, proc.reward_token_ids, output_dim=output_dim, reward_token=reward_token)
    if lm_training == "lora":
        apply_lora_recipe(model, proc.reward_token_ids, lora_rank, lora_alpha)
    return model, proc


def _forward_pairs(model, proc, batch, device):
    fa, fb = list(batch["frames_a"]), list(batch["frames_b"])
    captions = [str(c) for c in batch["caption"]]
    inputs = {k: v.to(device) for k, v in proc(fa + fb, captions + captions).items()}
    r = model(**inputs)
    return r[: len(fa)], r[len(fa):]


def score_margins(model, proc, rows: list[dict], device, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Raw rewards of A and B for ``rows`` (dicts with frames_a, frames_b, caption): two ``(N, 3)`` arrays."""
    ra, rb = [], []
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            chunk = rows[i : i + batch]
            b = {"frames_a": [r["frames_a"] for r in chunk], "frames_b": [r["frames_b"] for r in chunk],
                 "caption": [r["caption"] for r in chunk]}
            a_, b_ = _forward_pairs(model, proc, b, device)
            ra.append(a_.float().cpu().numpy())
            rb.append(b_.float().cpu().numpy())
    return np.concatenate(ra), np.concatenate(rb)


def accuracy_table(ra: np.ndarray, rb: np.ndarray, labels: np.ndarray,
                   overall_labels: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy with/without ties per dimension and Overall (docs/algorithms.md section 4, Metrics).

    ``ra``, ``rb``: raw rewards ``(N, 3)`` of videos A and B; ``labels``: ``(N, 3)`` int in {+1, -1, 0},
    -100 = missing. The Overall score is the sum over dimensions of rewards normalised by the mean/std of
    these rewards; the Overall label is ``overall_labels`` ``(N,)`` when given (a benchmark's own column,
    -100 = missing), else the majority of the valid per-dimension labels."""
    out = {}
    allr = np.concatenate([ra, rb])
    mean, std = allr.mean(0), allr.std(0) + 1e-8
    na, nb = (ra - mean) / std, (rb - mean) / std
    for d, name in enumerate(DIMS):
        ok = labels[:, d] != -100
        if ok.any():
            m, h = (ra - rb)[ok, d], labels[ok, d]
            out[f"acc_{name}"] = accuracy_without_ties(m, h)
            out[f"acc_ties_{name}"] = tie_aware_accuracy(m, h)[0]
    if overall_labels is not None:
        overall_h, has = overall_labels, overall_labels != -100
    else:
        overall_h, has = np.sign(np.where(labels == -100, 0, labels).sum(1)), (labels != -100).any(1)
    if has.any():
        m = (na.sum(1) - nb.sum(1))[has]
        out["acc_Overall"] = accuracy_without_ties(m, overall_h[has])
        out["acc_ties_Overall"] = tie_aware_accuracy(m, overall_h[has])[0]
    return out


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point."""
    import ray.train
    import torch.distributed as dist

    from videoalign_ray.data.cache import TensorCache, cache_loader, load_row
    from videoalign_ray.runtime.driver import run_steps
    from videoalign_ray.runtime.placement import worker_device
    from videoalign_ray.runtime.strategy import init_engine

    cfg = RewardLoopConfig(**config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = worker_device()  # not Ray's get_device(): logical GPUs have no CUDA
    model, proc = build_reward_model(cfg.tokenizer_dir, cfg.model_path, cfg.output_dim, cfg.reward_token, cfg.seed,
                                     cfg.lm_training, cfg.lora_rank, cfg.lora_alpha)
    if cfg.gradient_checkpointing:  # Qwen2-VL's LM and vision blocks recompute in the backward pass
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    engine = init_engine(model, cfg.deepspeed_config(world))
    loss_fn = btt_loss if cfg.loss == "btt" else bt_loss
    cache = TensorCache(cfg.cache_dir)  # the validation key rows are loaded here, this rank's share only
    val_rows = [load_row(r, cache) for i, r in enumerate(dataset_shard("val").iter_rows())
                if i % world == rank]

    def step_fn(batch, gen):
        labels = torch.as_tensor(batch["labels"]).to(device)
        ra, rb = _forward_pairs(engine, proc, batch, device)
        loss = loss_fn(ra.float(), rb.float(), labels)
        metrics = {"loss": loss.detach()}
        for d, name in enumerate(DIMS):
            ok = (labels[:, d] == 1) | (labels[:, d] == -1)
            hit = (torch.sign(ra[:, d] - rb[:, d]) == labels[:, d]) & ok
            metrics[f"batch_acc_{name}"] = hit.sum().float() / ok.sum().clamp(min=1)
        return loss, metrics

    def validate(step: int) -> dict[str, float]:
        engine.eval()
        ra, rb = score_margins(engine.module, proc, val_rows, device) if val_rows else (np.zeros((0, 3)),) * 2
        labels = np.stack([r["labels"] for r in val_rows]) if val_rows else np.zeros((0, 3), np.int64)
        engine.train()
        parts = [None] * world
        dist.all_gather_object(parts, (ra, rb, labels))
        ra, rb, labels = (np.concatenate([p[i] for p in parts]) for i in range(3))
        return {f"val/{k}": v for k, v in accuracy_table(ra, rb, labels).items()} if len(labels) else {}

    run_steps(cfg.driver_spec("reward"), engine, step_fn, METRIC_KEYS, lora=False,
              adapter_config={"lm_training": cfg.lm_training, "r": cfg.lora_rank, "lora_alpha": cfg.lora_alpha},
              validate_fn=validate, load=cache_loader(cfg.cache_dir))


def loop_config_dict(cfg: RewardLoopConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))
