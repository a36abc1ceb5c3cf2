"""On-disk cache of encoded tensors (video latents, prompt embeddings), one safetensors file per key.

Keys hash everything the tensor depends on: for a video (absolute path, size, mtime, frame count, pixel
size, VAE id); for a prompt (text, text-encoder id, token length). Entries are written atomically, so a
crash leaves either a complete entry or none. On a multi-node cluster ``root`` must be shared storage.

Training data travel as small key rows (``<name>_key`` columns); :func:`load_row` / :func:`load_batch` turn
them into tensors where they are consumed (a training worker, a Ray Data map), so the object store never
holds the tensors of the whole table.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load, load_file, save, save_file

from videoalign_ray.data.transforms import FRAMES_VERSION
from videoalign_ray.runtime.fileio import atomic_path, is_uri


def video_key(path: str, num_frames: int, height: int, width: int, vae_id: str, clip_rule: str = "") -> str:
    """Cache key of a video's latents; changes when the file, the sampling (``clip_rule``: the generator's
    window rule, ``data.sampling.ClipRule.key``), the size, the decoding or resizing (``transforms.FRAMES_VERSION``)
    or the VAE changes."""
    st = os.stat(path)
    raw = (f"video\0{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{num_frames}\0{height}x{width}\0{vae_id}"
           f"\0v{FRAMES_VERSION}" + (f"\0{clip_rule}" if clip_rule else ""))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


PROMPT_RULE = "wan-prompt-clean"
"""How prompts are prepared before tokenizing (``flow.sampling.prompt_clean``); in every prompt key, so entries
written before prompts were cleaned are not mixed with new ones."""


def prompt_key(prompt: str, encoder_id: str, max_tokens: int) -> str:
    """Cache key of a prompt's token embeddings."""
    return hashlib.sha256(f"prompt\0{prompt}\0{encoder_id}\0{max_tokens}\0{PROMPT_RULE}".encode()).hexdigest()[:32]


class TensorCache:
    """A folder of ``<key[:2]>/<key>.safetensors`` files, each holding one tensor named ``value`` (and, for a
    tensor stored without its zero padding, its padded length ``pad_to``: :meth:`put` / :meth:`get`).

    ``root`` is a local path (entries written atomically: temp file + rename) or a URI that pyarrow opens
    (``s3://bucket/prefix``; credentials, region and endpoint from the usual ``AWS_*`` variables, e.g.
    ``AWS_ENDPOINT_URL`` for MinIO), where an object becomes visible only once its upload completes, so a
    crash leaves no partial entry either.
    """

    def __init__(self, root: str | Path):
        self.root = str(root).rstrip("/") if is_uri(root) else Path(root)
        self._fs = None
        if is_uri(root):
            from pyarrow import fs

            self._fs, self._base = fs.FileSystem.from_uri(self.root)

    def path(self, key: str) -> Path | str:
        """Where the entry of ``key`` lives: a local path, or the object path inside the URI's filesystem."""
        if self._fs is not None:
            return f"{self._base}/{key[:2]}/{key}.safetensors"
        return self.root / key[:2] / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        if self._fs is not None:
            from pyarrow import fs

            return self._fs.get_file_info(self.path(key)).type == fs.FileType.File
        return self.path(key).is_file()

    def get(self, key: str) -> torch.Tensor | None:
        """The tensor of ``key``, or None when the cache has no entry for it. An entry stored in bfloat16 comes
        back in float32 (NumPy, which the loaders hand on, has no bfloat16); one stored with ``pad_to`` comes back
        zero-padded along dim 0 to that length (prompt embeddings: as WanPipeline pads them)."""
        if self._fs is not None:
            try:
                with self._fs.open_input_stream(self.path(key)) as f:
                    data = f.read()
            except FileNotFoundError:
                return None
            entry = load(data)
        else:
            p = self.path(key)
            if not p.is_file():
                return None
            entry = load_file(p)
        value = entry["value"]
        if value.dtype == torch.bfloat16:
            value = value.float()
        if "pad_to" in entry and value.shape[0] < int(entry["pad_to"]):
            pad = value.new_zeros((int(entry["pad_to"]) - value.shape[0], *value.shape[1:]))
            value = torch.cat([value, pad])
        return value

    def put(self, key: str, value: torch.Tensor, *, pad_to: int | None = None) -> None:
        """Store ``value`` under ``key`` (as given: dtype and shape); with ``pad_to``, :meth:`get` pads it with
        zeros along dim 0 to that length (store a zero-padded tensor with :func:`put_unpadded`)."""
        tensors = {"value": value.contiguous()}
        if pad_to is not None:
            tensors["pad_to"] = torch.tensor(pad_to, dtype=torch.int64)
        if self._fs is not None:
            data = save(tensors)
            with self._fs.open_output_stream(self.path(key)) as f:  # visible once the upload completes
                f.write(data)
            return
        with atomic_path(self.path(key), fsync=False) as tmp:
            save_file(tensors, str(tmp))


def put_unpadded(cache: TensorCache, key: str, embeds: torch.Tensor) -> None:
    """Store zero-padded prompt embeddings ``(L, D)`` at their true token length: the rows up to the last
    non-zero one (the text encoder zeroes every row past a prompt's tokens, as WanPipeline does), with
    ``pad_to = L`` so :meth:`TensorCache.get` gives back the same ``(L, D)`` tensor. A 512x4096 float32 Wan
    prompt embedding of n tokens takes n/512 of its padded 8.4 MB."""
    nonzero = embeds.reshape(embeds.shape[0], -1).abs().amax(dim=1) > 0
    length = int(nonzero.nonzero().max()) + 1 if bool(nonzero.any()) else 0
    cache.put(key, embeds[:length].clone(), pad_to=embeds.shape[0])


KEY_SUFFIX = "_key"


def load_row(row: dict, cache: TensorCache) -> dict:
    """A training row from a key row: every column ``<name>_key`` (a cache key) becomes ``<name>``, the cached
    tensor as a NumPy array (latents ``(C, F, h, w)`` f32, prompt embeddings ``(L, D)`` f32, reward frames
    ``(T, H, W, 3)`` uint8); other columns pass through.

    Raises:
        FileNotFoundError: a key not in the cache (names the key, the column and the cache root).
    """
    out = {k: v for k, v in row.items() if not k.endswith(KEY_SUFFIX)}
    for col, key in row.items():
        if not col.endswith(KEY_SUFFIX):
            continue
        value = cache.get(str(key))
        if value is None:
            raise FileNotFoundError(f"cache entry {key} ({col}) not in {cache.root}: on a multi-node cluster the "
                                    "cache must be shared storage (--cache-dir)")
        out[col[: -len(KEY_SUFFIX)]] = value.numpy()
    return out


def load_batch(batch: dict, cache: TensorCache) -> dict:
    """:func:`load_row` over a columnar batch ``{column: (B, ...) array}``: loaded columns are stacked
    ``(B, ...)`` when their shapes agree, else kept as a ``(B,)`` object array of arrays (ragged frames)."""
    cols = [c for c in batch if c.endswith(KEY_SUFFIX)]
    if not cols:
        return batch
    n = len(next(iter(batch.values())))
    rows = [load_row({c: batch[c][i] for c in cols}, cache) for i in range(n)]
    out = {k: v for k, v in batch.items() if not k.endswith(KEY_SUFFIX)}
    for c in cols:
        name = c[: -len(KEY_SUFFIX)]
        values = [r[name] for r in rows]
        if len({v.shape for v in values}) == 1:
            out[name] = np.stack(values)
        else:
            out[name] = np.empty(n, dtype=object)
            out[name][:] = values
    return out


def load_row_at(row: dict, cache_dir: str) -> dict:
    """:func:`load_row` with the cache given by its root (a Ray Data ``map`` function)."""
    return load_row(row, TensorCache(cache_dir))


def cache_loader(cache_dir: str):
    """The micro-batch loader that a training worker hands to ``runtime.driver.run_steps``: :func:`load_batch`
    over the cache at ``cache_dir``, or None when ``cache_dir`` is "" (the rows carry their tensors)."""
    return partial(load_batch, cache=TensorCache(cache_dir)) if cache_dir else None


@dataclass
class KeyRows:
    """A data plane's result: the key rows of the usable pairs (``table``: a Parquet file in the cache,
    ``runtime.key_table``, ~200 bytes a row, in the order of the pairs; None when no pair is usable), the cache
    they point into, the rejects (``data.schema.Reject``) and counts.

    Training workers get per-rank files of the table (:meth:`split`) and load their micro-batches themselves
    (:func:`cache_loader`); :meth:`load` gives other readers the tensor rows lazily. The object store holds
    neither the tensors nor the key rows at rest.
    """

    table: str | None
    cache_dir: str
    rejects: list = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> Any:
        """The key rows as a lazy Ray Dataset (read from ``table`` when iterated), or None."""
        from videoalign_ray.runtime.key_table import key_table_dataset

        return None if self.table is None else key_table_dataset(self.table)

    def count(self) -> int:
        """Rows in the table (from the file's footer; 0 without a table)."""
        from videoalign_ray.runtime.key_table import count_rows

        return 0 if self.table is None else count_rows(self.table)

    def split(self, num_workers: int) -> tuple[list, int]:
        """(one ``runtime.key_table.KeyTableShard`` per rank over equal contiguous row ranges, rows per rank);
        see ``runtime.key_table.split_key_table``."""
        from videoalign_ray.runtime.key_table import KeyTableShard, split_key_table

        if self.table is None:
            return [], 0
        files, per = split_key_table(self.table, num_workers)
        return [KeyTableShard(f) for f in files], per

    def shard(self) -> Any:
        """All key rows as one ``runtime.key_table.KeyTableShard`` (what every rank reads, e.g. validation)."""
        from videoalign_ray.runtime.key_table import KeyTableShard

        return None if self.table is None else KeyTableShard(self.table)

    def load(self, rows: Any = None) -> Any:
        """A lazy Ray Dataset of :func:`load_row` rows read from the cache when iterated; ``rows`` defaults to
        all key rows (None when there are none)."""
        rows = self.rows if rows is None else rows
        return None if rows is None else rows.map(load_row_at, fn_kwargs={"cache_dir": self.cache_dir})

    @property
    def dataset(self) -> Any:
        """All tensor rows, lazily (see :meth:`load`)."""
        return self.load()
