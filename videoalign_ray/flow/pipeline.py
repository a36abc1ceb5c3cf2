"""Ray Data pipeline: preference pairs -> decoded videos -> VAE latents (cached) -> training rows.

    unique videos --map(decode, tasks)--> frames --+
                                                   +--map_batches(Encoder, actor pool)--> latent and embedding cache
    prompts not in the cache ----------------------+
    good pairs --> small key rows {pair_id, chosen_key, rejected_key, prompt_embeds_key} (a Parquet file in the cache)
    key rows (one file per rank) --the training worker loads each micro-batch from the cache, prefetched--> tensors

The key rows (about 200 bytes a pair) live in a file beside the cache (``runtime.key_table``); a training worker
reads the latents of its next micro-batches from the cache (``runtime.driver``), so neither the object store
nor the driver ever holds tensors. The stage's input rows (videos and prompts not in the cache) are written to a
Parquet file of their own beside the cache and read block by block as the decode tasks ask for them, then the
file is removed. What still grows with the pairs is small rows on the driver (its pair list, the stage's result
rows: benchmarks/data_scaling.py, docs/scale.md). Decode runs as plain tasks spread over the
cluster's nodes; the encoder actors (``encoder_actors``, default one per GPU) load the VAE once and the text
encoder at their first prompt. Videos and prompts go through one dataset and one actor pool: a second pool for
the prompts cost a second round of actor start-ups (7 s of a 65 s tiny run on 2 CPUs). Videos and
prompts already in the cache are found on the driver (one stat per video), so a rerun, or an online round
whose generator wrote its latents, starts no decode task and no encoder actor. A video that fails to decode rejects
every pair that uses it, with the decoder's reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from videoalign_ray.data.cache import KeyRows, TensorCache, prompt_key, put_unpadded, video_key
from videoalign_ray.data.sampling import ClipRule
from videoalign_ray.data.schema import PreferencePair, Reject
from videoalign_ray.data.transforms import resize_center_crop
from videoalign_ray.data.video import VideoDecodeError, expand_frames, load_video
from videoalign_ray.runtime.key_table import key_table_blocks, remove_key_table, write_key_table
from videoalign_ray.runtime.launch import collect_rows, current_node_id

DECODE_CPUS = 0.5


@dataclass(frozen=True)
class EncodeSpec:
    """What the generator needs: frames (and the rule that picks them), pixel size, text length, and where models
    and cache live."""

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
    clip_rule: ClipRule | None = None
    """The window at the model's frame rate (``data.sampling.ClipRule``); None: ``num_frames`` spread over the
    whole clip (for clips made at the model's length and rate, e.g. the synthetic world's in tests)."""
    latent_dtype: str = "float32"
    """How latents are stored: the training dtype (``bfloat16`` for bf16 runs: 4.2 MB instead of 8.4 MB per Wan
    video at 16x21x60x104; ``float32`` otherwise, CPU runs included); loaded back as float32."""

    def video_key(self, path: str) -> str:
        """The latent cache key of ``path`` under this spec (size, VAE and frame rule)."""
        rule = (self.clip_rule.key() if self.clip_rule else "") + (
            f"|{self.latent_dtype}" if self.latent_dtype != "float32" else "")
        return video_key(path, self.num_frames, self.height, self.width, self.vae_id, rule)


def _decode_row(row: dict, spec: EncodeSpec) -> dict:
    """One input row -> one encoder row. A video row (``path``) is decoded to ``frames`` ``(F, H, W, 3)``
    uint8 (status ``decoded``; ``cached`` when its latents are in the cache; ``error`` with the decoder's
    reason); a prompt row (``prompt``, with the cache key the driver gave it) passes on with status ``prompt``."""
    cache = TensorCache(spec.cache_dir)
    empty = np.zeros((0, spec.height, spec.width, 3), np.uint8)
    out = {"path": row["path"], "prompt": row["prompt"], "key": "", "frames": empty, "status": "error", "error": "",
           "node": current_node_id(), "trimmed": False, "resampled": False}  # which node decoded it (data_stats: decode_nodes)
    if row["prompt"]:  # the driver computed its key and found it missing from the cache
        out["key"], out["status"] = row["key"], "prompt"
        return out
    try:
        key = spec.video_key(row["path"])
        out["key"] = key
        if cache.has(key):
            out["status"] = "cached"
            return out
        video = load_video(row["path"], num_frames=spec.num_frames, clip_rule=spec.clip_rule,
                           min_decoded_fraction=spec.min_decoded_fraction, backend=spec.video_backend,
                           transform=lambda f, info: resize_center_crop(f, spec.height, spec.width, sar=info.sar))
        out["frames"] = np.ascontiguousarray(expand_frames(video.distinct, video.inverse))
        out["status"], out["trimmed"], out["resampled"] = "decoded", video.trimmed, video.resampled
    except (VideoDecodeError, OSError, ValueError) as exc:
        out["error"] = str(exc)
    return out


class Encoder:
    """Ray Data actor: encodes decoded frames to VAE latents and prompts to text embeddings ``(L, D)``, and
    writes both to the cache. The VAE loads once, in the constructor; the text encoder at the first prompt row
    (an actor that only sees videos never loads it). Rows with status ``decoded`` become ``encoded`` (or
    ``error``: a failed VAE call is reported per video and the batch goes on); ``prompt`` rows become
    ``encoded``; other rows pass through."""

    def __init__(self, spec: EncodeSpec):
        import torch

        from videoalign_ray.flow.model import load_vae

        torch.set_num_threads(max(1, torch.get_num_threads()))
        self.spec = spec
        self.cache = TensorCache(spec.cache_dir)
        from videoalign_ray.runtime.placement import worker_device

        self.device = worker_device()  # a logical GPU without CUDA encodes on CPU
        self.vae = load_vae(spec.model_dir).to(self.device)
        self.text_encoder = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from videoalign_ray.flow.model import encode_frames

        status = list(batch["status"])
        errors = list(batch["error"])
        for i, st in enumerate(status):
            if st != "decoded":
                continue
            try:
                latents = encode_frames(self.vae, np.asarray(batch["frames"][i]))
                self.cache.put(str(batch["key"][i]), latents.to(getattr(torch, self.spec.latent_dtype)))
                status[i] = "encoded"
            except Exception as exc:  # noqa: BLE001 - reported per video, the batch goes on
                status[i], errors[i] = "error", f"{batch['path'][i]}: VAE encode failed ({exc})"
        prompts = [i for i, st in enumerate(status) if st == "prompt"]
        if prompts:
            if self.text_encoder is None:
                from videoalign_ray.flow.model import TextEncoder

                self.text_encoder = TextEncoder(self.spec.model_dir, self.spec.max_text_tokens, self.device)
            embeds = self.text_encoder.encode([str(batch["prompt"][i]) for i in prompts])
            for j, i in enumerate(prompts):
                put_unpadded(self.cache, str(batch["key"][i]), embeds[j])
                status[i] = "encoded"
        # no prompt text in the result rows: the driver keeps only the video rows (smaller result blocks)
        return {"path": batch["path"], "key": batch["key"], "status": np.array(status),
                "error": np.array(errors), "node": batch["node"], "trimmed": batch["trimmed"],
                "resampled": batch["resampled"]}


def _cached_videos(videos: list[str], spec: EncodeSpec) -> dict[str, dict]:
    """Rows (status ``cached``) of the videos whose latents are already in the cache: one ``stat`` per video
    on the driver, so a fully cached run starts no decode task or encoder actor."""
    cache, rows = TensorCache(spec.cache_dir), {}
    for v in videos:
        try:
            key = spec.video_key(v)
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
    prompts = sorted({p.prompt for p in pairs})
    prompt_keys = {p: prompt_key(p, spec.text_encoder_id, spec.max_text_tokens) for p in prompts}
    cache = TensorCache(spec.cache_dir)
    todo = [{"path": v, "prompt": "", "key": ""} for v in videos if v not in video_rows]
    todo += [{"path": "", "prompt": p, "key": k} for p, k in prompt_keys.items() if not cache.has(k)]
    if todo:
        # The input rows go through a Parquet file beside the cache, read block by block as the decode tasks
        # ask for them: ``ray.data.from_items`` put every row in the object store at once (its peak grew with N).
        # Blocks (row groups) of at most 256 rows, at least 64 blocks while there are as many rows: decode tasks
        # to spread over the nodes.
        num_blocks = min(len(todo), max(64, math.ceil(len(todo) / 256)))
        block_rows = math.ceil(len(todo) / num_blocks)
        todo_table = write_key_table(todo, spec.cache_dir, unique=True, row_group_rows=block_rows)
        encoded = (
            key_table_blocks(todo_table)
            # Decode tasks ask for less CPU than the encoder actors, so Ray Data keeps them a separate
            # operator (tasks spread over the cluster) instead of fusing decode into the actors.
            .map(_decode_row, fn_kwargs={"spec": spec}, num_cpus=DECODE_CPUS)  # Ray Data SPREADs tasks over nodes
            .map_batches(
                Encoder,
                fn_constructor_kwargs={"spec": spec},
                batch_size=4,
                compute=ray.data.ActorPoolStrategy(size=spec.encoder_actors),
                num_cpus=1,
                num_gpus=1 if spec.use_gpu else 0,
            )
        )
        try:
            for r in collect_rows(encoded, len(todo), "decode+encode videos and prompts", "item"):
                if r["path"]:
                    video_rows[r["path"]] = r
        finally:
            remove_key_table(todo_table)

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
        # clips at the model's rate (ClipRule): shortened to fit, from another frame rate; short ones rejected
        "videos_trimmed": sum(bool(r.get("trimmed")) for r in video_rows.values()),
        "videos_resampled": sum(bool(r.get("resampled")) for r in video_rows.values()),
        "videos_too_short": sum(r["status"] == "error" and "short clip" in r["error"]
                                for r in video_rows.values()),
        "decode_nodes": len({r["node"] for r in video_rows.values() if r["status"] != "cached"}),  # nodes that decoded
        "prompts": len(prompts),
    }
    return KeyRows(table=write_key_table(items, spec.cache_dir), cache_dir=spec.cache_dir, rejects=rejects, stats=stats)
