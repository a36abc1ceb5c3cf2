"""Ray Data pipeline: preference pairs -> decoded videos -> VAE latents (cached) -> training rows.

    unique videos --map(decode, tasks)--> frames --map_batches(LatentEncoder, actor pool)--> latent cache
    unique prompts --map_batches(PromptEncoder, actor pool)--> embedding cache
    good pairs --> small key rows {pair_id, chosen_key, rejected_key, prompt_embeds_key} (materialized)
    key rows (one shard per rank) --the training worker loads each micro-batch from the cache, prefetched--> tensors

Only the key rows live in the object store for the whole job (about 200 bytes a pair); a training worker
reads the latents of its next micro-batches from the cache (``runtime.driver``), so object-store and driver
memory do not grow with the number of pairs (benchmarks/data_scaling.py). Decode runs as plain tasks spread over the
cluster's nodes; the encoder actors (``encoder_actors``, default one per GPU) load their model once. Videos and
prompts already in the cache are found on the driver (one stat per video), so a rerun, or an online round
whose generator wrote its latents, starts no decode task and no encoder actor. A video that fails to decode rejects
every pair that uses it, with the decoder's reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from videoalign_ray.data.cache import KeyRows, TensorCache, prompt_key, video_key
from videoalign_ray.data.schema import PreferencePair, Reject
from videoalign_ray.data.transforms import resize_center_crop
from videoalign_ray.data.video import VideoDecodeError, expand_frames, load_video
from videoalign_ray.runtime.launch import collect_rows, current_node_id, key_rows_dataset

DECODE_CPUS = 0.5


@dataclass(frozen=True)
class EncodeSpec:
    """What the generator needs: frames, pixel size, text length, and where models and cache live."""

    model_dir: str
    cache_dir: str
    num_frames: int
    height: int
    width: int
    max_text_tokens: int
    vae_id: str
    text_encoder_id: str
    min_decoded_fraction: float = 0.5
    video_backend: str = "auto"
    encoder_actors: int = 1
    use_gpu: bool = False


def _decode_row(row: dict, spec: EncodeSpec) -> dict:
    cache = TensorCache(spec.cache_dir)
    empty = np.zeros((0, spec.height, spec.width, 3), np.uint8)
    out = {"path": row["path"], "key": "", "frames": empty, "status": "error", "error": "",
           "node": current_node_id()}  # which node decoded it (data_stats: decode_nodes)
    try:
        key = video_key(row["path"], spec.num_frames, spec.height, spec.width, spec.vae_id)
        out["key"] = key
        if cache.has(key):
            out["status"] = "cached"
            return out
        video = load_video(row["path"], num_frames=spec.num_frames, min_decoded_fraction=spec.min_decoded_fraction,
                           backend=spec.video_backend)
        small = resize_center_crop(video.distinct, spec.height, spec.width, sar=video.info.sar)
        out["frames"] = np.ascontiguousarray(expand_frames(small, video.inverse))
        out["status"] = "decoded"
    except (VideoDecodeError, OSError, ValueError) as exc:
        out["error"] = str(exc)
    return out


class LatentEncoder:
    """Ray Data actor: loads the VAE once, encodes decoded frames and writes latents to the cache."""

    def __init__(self, spec: EncodeSpec):
        import torch

        from videoalign_ray.flow.model import load_vae

        torch.set_num_threads(max(1, torch.get_num_threads()))
        self.spec = spec
        self.cache = TensorCache(spec.cache_dir)
        self.device = "cuda" if spec.use_gpu else "cpu"
        self.vae = load_vae(spec.model_dir).to(self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from videoalign_ray.flow.model import encode_frames

        status = list(batch["status"])
        errors = list(batch["error"])
        for i, st in enumerate(status):
            if st != "decoded":
                continue
            try:
                self.cache.put(str(batch["key"][i]), encode_frames(self.vae, np.asarray(batch["frames"][i])))
                status[i] = "encoded"
            except Exception as exc:  # noqa: BLE001 - reported per video, the batch goes on
                status[i], errors[i] = "error", f"{batch['path'][i]}: VAE encode failed ({exc})"
        return {"path": batch["path"], "key": batch["key"], "status": np.array(status), "error": np.array(errors),
                "node": batch["node"]}


class PromptEncoder:
    """Ray Data actor: loads the text encoder once, writes prompt embeddings ``(L, D)`` to the cache."""

    def __init__(self, spec: EncodeSpec):
        from videoalign_ray.flow.model import TextEncoder

        self.spec = spec
        self.cache = TensorCache(spec.cache_dir)
        self.encoder = TextEncoder(spec.model_dir, spec.max_text_tokens, "cuda" if spec.use_gpu else "cpu")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts = [str(p) for p in batch["prompt"]]
        keys = [prompt_key(p, self.spec.text_encoder_id, self.spec.max_text_tokens) for p in prompts]
        todo = [i for i, k in enumerate(keys) if not self.cache.has(k)]
        if todo:
            embeds = self.encoder.encode([prompts[i] for i in todo])
            for j, i in enumerate(todo):
                self.cache.put(keys[i], embeds[j])
        return {"prompt": batch["prompt"], "key": np.array(keys)}


def _cached_videos(videos: list[str], spec: EncodeSpec) -> dict[str, dict]:
    """Rows (status ``cached``) of the videos whose latents are already in the cache: one ``stat`` per video
    on the driver, so a fully cached run starts no decode task or encoder actor."""
    cache, rows = TensorCache(spec.cache_dir), {}
    for v in videos:
        try:
            key = video_key(v, spec.num_frames, spec.height, spec.width, spec.vae_id)
        except OSError:
            continue  # the decode task reports it with its reason
        if cache.has(key):
            rows[v] = {"path": v, "key": key, "status": "cached", "error": ""}
    return rows


def encode_pairs(
    pairs: list[PreferencePair], spec: EncodeSpec, extras: dict[str, dict[str, Any]] | None = None
) -> KeyRows:
    """Decode and encode every video and prompt of ``pairs`` with Ray Data; build the training dataset.

    ``extras`` (optional, keyed by ``pair_id``): further numeric columns copied into each row (e.g. RWR
    rewards ``reward_chosen`` / ``reward_rejected``, or the per-dimension ``labels`` ``(3,)``).

    Returns:
        KeyRows: ``{pair_id, chosen_key, rejected_key, prompt_embeds_key, **extras}`` in the order of ``pairs`` (the table's row order: pair ids hash the absolute
        paths, so ordering by them made the batches depend on where the data lie); ``load()`` gives the tensors;
        ``rejects`` for pairs whose video failed.
    """
    videos = sorted({p.chosen for p in pairs} | {p.rejected for p in pairs})
    video_rows = _cached_videos(videos, spec)  # a rerun (or the online loop's generated latents) skips Ray Data
    todo = [v for v in videos if v not in video_rows]
    if todo:
        decoded = (
            ray.data.from_items([{"path": v} for v in todo], override_num_blocks=min(len(todo), 64))
            # Decode tasks ask for less CPU than the encoder actors, so Ray Data keeps them a separate
            # operator (tasks spread over the cluster) instead of fusing decode into the actors.
            .map(_decode_row, fn_kwargs={"spec": spec}, num_cpus=DECODE_CPUS)  # Ray Data SPREADs tasks over nodes
            .map_batches(
                LatentEncoder,
                fn_constructor_kwargs={"spec": spec},
                batch_size=4,
                compute=ray.data.ActorPoolStrategy(size=spec.encoder_actors),
                num_cpus=1,
                num_gpus=1 if spec.use_gpu else 0,
            )
        )
        done = collect_rows(decoded, len(todo), "decode+encode videos", "video")
        video_rows.update({r["path"]: r for r in done})
    prompts = sorted({p.prompt for p in pairs})
    prompt_keys = {p: prompt_key(p, spec.text_encoder_id, spec.max_text_tokens) for p in prompts}
    cache = TensorCache(spec.cache_dir)
    if not all(cache.has(k) for k in prompt_keys.values()):
        prompt_rows = (
            ray.data.from_items([{"prompt": p} for p in prompts])
            .map_batches(
                PromptEncoder, fn_constructor_kwargs={"spec": spec}, batch_size=64,
                compute=ray.data.ActorPoolStrategy(size=1), num_gpus=1 if spec.use_gpu else 0,
            )
        )
        prompt_keys = {r["prompt"]: r["key"] for r in collect_rows(prompt_rows, len(prompts), "encode prompts", "prompt")}

    rejects: list[Reject] = []
    items = []
    for p in pairs:
        bad = [(col, path) for col, path in (("chosen", p.chosen), ("rejected", p.rejected))
               if video_rows[path]["status"] == "error"]
        if bad:
            for col, path in bad:
                rejects.append(Reject(p.row, col, path, video_rows[path]["error"] or "undecodable video"))
            continue
        items.append({
            "pair_id": p.pair_id,
            "chosen_key": video_rows[p.chosen]["key"],
            "rejected_key": video_rows[p.rejected]["key"],
            "prompt_embeds_key": prompt_keys[p.prompt],
            **((extras or {}).get(p.pair_id, {})),
        })
    stats = {
        "videos": len(videos),
        "videos_cached": sum(r["status"] == "cached" for r in video_rows.values()),
        "videos_encoded": sum(r["status"] == "encoded" for r in video_rows.values()),
        "videos_failed": sum(r["status"] == "error" for r in video_rows.values()),
        "decode_nodes": len({r["node"] for r in video_rows.values() if r["status"] != "cached"}),  # nodes that decoded
        "prompts": len(prompts),
    }
    return KeyRows(rows=key_rows_dataset(items), cache_dir=spec.cache_dir, rejects=rejects, stats=stats)
