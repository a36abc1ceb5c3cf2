"""Data planes at two table sizes: Flow-DPO data preparation and VideoReward data ingest at N pairs.

    python benchmarks/data_scaling.py [--sizes 500,4000] [--num-workers 2]

For each pipeline and N, a fresh process (own local Ray, own cache) builds an N-row VideoAlign table over the
real FETV videos in ../shared/data/fetv (24 GIFs reused across rows; every row gets its own prompt so prompt
encoding grows with N), runs the job's data plane (``load_pairs_ray`` -> ``encode_pairs`` for Flow-DPO on the
tiny-world generator; ``load_pairs_ray`` -> ``decode_pairs`` at the real reward spec, 2 fps and a 448x448 pixel
budget, for VideoReward), splits the key rows for ``--num-workers`` ranks, and has one Ray task per rank read
its whole shard with the training driver's reader. Measured: wall time per pair (preparation + reading), the
driver's peak RSS, the peak object-store use (sampled every 0.2 s through Ray's memory-info RPC), and the
bytes of tensors the workers read: what the previous design held in the object store at once.
Memory ratios near 1.0 between the sizes mean the plane does not grow with N.

First (and alone with ``--cache-only``) it measures the cache entry sizes at Wan's real shapes: one video's
latents (16x21x60x104) as float32 and as bf16 (the store of bf16 runs), one prompt's UMT5 embeddings (512x4096)
zero-padded and at their true token length, for the token lengths of the real prompts in
../shared/data/eval-prompts (counted with the tiny preset's WordPiece tokenizer: UMT5's own is not on this
machine; a proxy), and the cache at the paper's 108k videos and 16k prompts.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FETV = ROOT.parent / "shared" / "data" / "fetv"


def write_table(path: Path, n: int) -> None:
    """An N-row VideoAlign table cycling over FETV's within-prompt pairs; the labels follow FETV's human scores
    on the pair's dimension and the prompt carries the row number."""
    with open(FETV / "pairs.csv", newline="") as f:
        src = list(csv.DictReader(f))
    dim = {"SQ": "VQ", "TQ": "MQ", "Alignment": "TA"}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path_A", "path_B", "prompt", "VQ", "MQ", "TA"])
        for i in range(n):
            r = src[i % len(src)]
            labels = {d: ("A" if dim[r["dimension"]] == d else "same") for d in ("VQ", "MQ", "TA")}
            w.writerow([str(FETV / r["chosen"]), str(FETV / r["rejected"]), f"{r['prompt']}, take {i}",
                        labels["VQ"], labels["MQ"], labels["TA"]])


class Sampler:
    """Peak driver RSS and peak object-store bytes, sampled in a thread."""

    def __init__(self, period_s: float = 0.2):
        import psutil
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        self.proc, self.period = psutil.Process(), period_s
        self.state = get_state_from_address(None)
        self.reply = get_memory_info_reply
        self.rss = self.store = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.rss = max(self.rss, self.proc.memory_info().rss)
            try:
                used = self.reply(self.state, timeout_seconds=5).store_stats.object_store_bytes_used
                self.store = max(self.store, used)
            except Exception:  # noqa: BLE001 - a missed sample is not a measurement error
                pass
            self.stop.wait(self.period)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


def _read_shard(shard, cache_dir: str) -> tuple[int, int]:
    """(rows, tensor bytes) of one rank's shard of key rows, read in micro-batches of 2 with the training
    driver's own reader (cache loads in a prefetch thread)."""
    import numpy as np
    import torch

    from videoalign_ray.data.cache import cache_loader
    from videoalign_ray.runtime.driver import _batches

    rows = nbytes = 0
    for _, batch in _batches(shard, 2, 0, 0, 0, load=cache_loader(cache_dir)):
        rows += 2
        for v in batch.values():
            if isinstance(v, torch.Tensor):
                nbytes += v.numel() * v.element_size()
            elif isinstance(v, np.ndarray) and v.dtype == object:
                nbytes += sum(x.nbytes for x in v if isinstance(x, np.ndarray))
    return rows, nbytes


def measure(pipeline: str, n: int, workers: int) -> dict:
    """One pipeline at one size, in this (fresh) process."""
    import ray

    from videoalign_ray.data.ingest import load_pairs_ray as load_pairs  # the jobs: Ray Data reads, checks
    from videoalign_ray.runtime.launch import init_ray, split_for_workers

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    init_ray()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        table = out / "pairs.csv"
        write_table(table, n)
        with Sampler() as s:
            t0 = time.perf_counter()
            if pipeline == "flow":
                from videoalign_ray.flow.model import component_id, resolve_model_dir
                from videoalign_ray.flow.pipeline import EncodeSpec, encode_pairs

                loaded = load_pairs(table, local_max_bytes=0)  # Ray Data even for small tables
                model_dir = resolve_model_dir("tiny-world", None, out, 0)
                spec = EncodeSpec(model_dir=str(model_dir), cache_dir=str(out / "cache"), num_frames=8, height=32,
                                  width=32, max_text_tokens=16, vae_id=component_id(model_dir, "vae"),
                                  text_encoder_id="all-MiniLM-L6-v2")
                encoded = encode_pairs(loaded.pairs, spec)
            else:
                from videoalign_ray.reward.pipeline import FrameSpec, decode_pairs

                loaded = load_pairs(table, keep_ties=True, local_max_bytes=0)
                encoded = decode_pairs(loaded.pairs, FrameSpec(), str(out / "cache"))
            keys, _, _ = split_for_workers(encoded, workers, 2)
            t_prep = time.perf_counter() - t0
            read = ray.remote(_read_shard).options(num_cpus=0.5)
            results = ray.get([read.remote(k, encoded.cache_dir) for k in keys], timeout=1800)
            total = time.perf_counter() - t0
    rows = sum(r[0] for r in results)
    assert rows >= n - len(encoded.rejects) - 2 * workers, (rows, n)
    return {"pipeline": pipeline, "n": n, "rows_read": rows, "prep_s": t_prep, "total_s": total,
            "s_per_pair": total / n, "driver_rss_mib": s.rss / 2**20, "store_peak_mib": s.store / 2**20,
            "tensor_mib_read": sum(r[1] for r in results) / 2**20, "rejects": len(encoded.rejects)}


PAPER_VIDEOS, PAPER_PROMPTS = 108_000, 16_000
EVAL_PROMPTS = ROOT.parent / "shared" / "data" / "eval-prompts"


def cache_bytes() -> None:
    """Print bytes per cache entry before/after at Wan's shapes and the cache size at the paper's scale."""
    import numpy as np
    import pandas as pd
    import torch

    from videoalign_ray.data.cache import TensorCache, put_unpadded
    from videoalign_ray.flow.model import TINY_WORLD_ASSET, text_tokenizer

    tok = text_tokenizer(TINY_WORLD_ASSET)
    with tempfile.TemporaryDirectory() as tmp:
        cache = TensorCache(tmp)
        latents = torch.randn(16, 21, 60, 104)
        cache.put("a" * 32, latents)
        cache.put("b" * 32, latents.bfloat16())
        v32, v16 = (cache.path(k * 32).stat().st_size for k in "ab")
        print(f"latents per video (16x21x60x104): float32 {v32 / 1e6:.2f} MB, bf16 {v16 / 1e6:.2f} MB")
        rows = []
        for name, column in (("videogen_eval.csv", "prompt"), ("videogen_eval.csv", "prompt_shorter"),
                             ("vbench.csv", None)):
            df = pd.read_csv(EVAL_PROMPTS / name)
            texts = df[column or df.columns[0]].astype(str).tolist()
            n = np.array([min(len(tok(t).input_ids), 512) for t in texts])
            emb = torch.zeros(512, 4096)
            emb[: int(np.median(n))] = torch.randn(int(np.median(n)), 4096)
            cache.put("c" * 32, emb)
            put_unpadded(cache, "d" * 32, emb)
            padded, true = (cache.path(k * 32).stat().st_size for k in "cd")
            per_prompt = (n * 4096 * 4 + (true - int(np.median(n)) * 4096 * 4)).mean()  # mean over the prompts
            rows.append((f"{name}:{column or df.columns[0]}", len(texts), float(np.median(n)), padded, per_prompt))
            print(f"prompt embeddings (512x4096 f32), {rows[-1][0]}: {len(texts)} prompts, median {np.median(n):.0f} "
                  f"tokens (max {n.max()}): padded {padded / 1e6:.2f} MB, true length {per_prompt / 1e6:.3f} MB mean")
    long_prompts = rows[0][4]
    before = PAPER_VIDEOS * v32 + PAPER_PROMPTS * rows[0][3]
    after = PAPER_VIDEOS * v16 + PAPER_PROMPTS * long_prompts
    print(f"cache at {PAPER_VIDEOS} videos + {PAPER_PROMPTS} prompts (long prompts): before {before / 1e9:.0f} GB "
          f"(float32 latents, padded embeddings), after {after / 1e9:.0f} GB (bf16 latents, true-length embeddings); "
          f"float32 runs keep float32 latents: {(PAPER_VIDEOS * v32 + PAPER_PROMPTS * long_prompts) / 1e9:.0f} GB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="500,4000")
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # "pipeline:n": run one measurement (child process)
    ap.add_argument("--cache-only", action="store_true", help="only the cache entry sizes")
    args = ap.parse_args()
    if args.one:
        pipeline, n = args.one.split(":")
        print("RESULT " + json.dumps(measure(pipeline, int(n), args.num_workers)), flush=True)
        return
    cache_bytes()
    if args.cache_only:
        return
    if not FETV.is_dir():
        sys.exit(f"{FETV} not found: the benchmark reads the shared FETV videos")
    sizes = [int(x) for x in args.sizes.split(",")]
    results = {}
    for pipeline in ("flow", "reward"):
        for n in sizes:
            proc = subprocess.run([sys.executable, __file__, "--one", f"{pipeline}:{n}", "--num-workers",
                                   str(args.num_workers)], capture_output=True, text=True, timeout=3600, cwd=ROOT)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                sys.exit(f"{pipeline} at N={n} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
            r = results[pipeline, n] = json.loads(line[7:])
            print(f"{pipeline:6s} N={n:5d}: {r['total_s']:7.1f} s ({1000 * r['s_per_pair']:6.1f} ms/pair, prep "
                  f"{r['prep_s']:.1f} s), driver RSS {r['driver_rss_mib']:6.0f} MiB, object store peak "
                  f"{r['store_peak_mib']:5.1f} MiB ({r['store_peak_mib'] * 2**20 / n:4.0f} B/pair), tensors read by workers {r['tensor_mib_read']:8.1f} MiB, "
                  f"rejects {r['rejects']}", flush=True)
    lo, hi = sizes[0], sizes[-1]
    for pipeline in ("flow", "reward"):
        a, b = results[pipeline, lo], results[pipeline, hi]
        print(f"{pipeline:6s} N={hi} / N={lo}: time per pair x{b['s_per_pair'] / a['s_per_pair']:.2f}, driver RSS "
              f"x{b['driver_rss_mib'] / a['driver_rss_mib']:.2f}, object store peak "
              f"x{b['store_peak_mib'] / max(a['store_peak_mib'], 1e-9):.2f} (tensor bytes x"
              f"{b['tensor_mib_read'] / a['tensor_mib_read']:.2f}); goal: each <= 1.2")


if __name__ == "__main__":
    main()
