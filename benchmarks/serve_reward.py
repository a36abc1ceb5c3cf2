"""Reward serving throughput and latency, side by side in one run, on loopback only.

    python benchmarks/serve_reward.py [--requests 256] [--checkpoint DIR] [--pixels 12544] [--hidden 256]

(a) in-process batched scoring (RewardScorer.score on batches of max_batch_size, the same torch threads as a
replica), (b) Serve via DeploymentHandle with @serve.batch, (c) Serve via handle with max_batch_size 1
(unbatched), (d) HTTP POST /score (multipart upload of the mp4: includes upload + decode, so it is not
comparable to (a)-(c), which send decoded frames). Each at 1 and 32 concurrent clients, a bounded number of
requests. Prints throughput (videos/s), p50/p99 latency (ms) and the ratios (b)/(a) and (b)/(c).
The default model is an untrained tiny VideoReward sized to be compute-bound (112x112 frames, hidden 256,
4 LM and 4 vision layers): timing does not depend on trained weights.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _ok(resp):
    """The JSON of a 200 response; anything else stops the benchmark with the server's message."""
    if resp.status_code != 200:
        raise RuntimeError(f"HTTP {resp.status_code}: {resp.text}")
    return resp.json()


def _drive(call, n: int, clients: int) -> dict:
    """Run ``call(i)`` n times from ``clients`` threads; returns throughput and latency stats."""
    lat: list[float] = []
    batches: list[int] = []

    def one(i):
        t0 = time.perf_counter()
        out = call(i)
        lat.append(time.perf_counter() - t0)
        if isinstance(out, dict) and "batch_size" in out:
            batches.append(out["batch_size"])

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    return {"throughput": n / wall, "p50_ms": 1000 * statistics.median(lat), "p99_ms": 1000 * _percentile(lat, 0.99),
            "batch": statistics.mean(batches) if batches else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=256, help="Requests per (path, concurrency) at 32 clients.")
    ap.add_argument("--checkpoint", default=None, help="VideoReward checkpoint (default: untrained tiny).")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--batch-wait", type=float, default=0.05, help="@serve.batch wait for a fuller batch (s).")
    ap.add_argument("--replica-cpus", type=float, default=2.0, help="CPUs (= torch threads) per replica.")
    ap.add_argument("--port", type=int, default=18461)
    ap.add_argument("--pixels", type=int, default=112 * 112, help="Frame pixel budget of the untrained model.")
    ap.add_argument("--hidden", type=int, default=256, help="LM hidden size of the untrained model.")
    args = ap.parse_args()

    import httpx
    import pandas as pd
    import ray
    import torch
    from ray import serve

    from videoalign_ray.serve.app import build_app
    from videoalign_ray.serve.client import post_video
    from videoalign_ray.serve.scorer import RewardScorer, make_untrained_checkpoint
    from videoalign_ray.synthetic.world import make_preference_dataset

    work = Path(tempfile.mkdtemp(prefix="va-bench-serve-"))
    ckpt = args.checkpoint or str(make_untrained_checkpoint(work / "ckpt", pixels=args.pixels, hidden=args.hidden,
                                                            layers=4, vision_dim=128, vision_depth=4))
    csv = make_preference_dataset(work / "data", num_pairs=4, seed=1)
    table = pd.read_csv(csv)
    videos = [(str(work / "data" / r[c]), r["prompt"]) for _, r in table.iterrows() for c in ("path_A", "path_B")]
    threads = max(1, int(args.replica_cpus))
    torch.set_num_threads(threads)
    scorer = RewardScorer(ckpt)
    frames = [scorer.decode(p) for p, _ in videos]
    prompts = [c for _, c in videos]
    uploads = [Path(p).read_bytes() for p, _ in videos]
    k = len(videos)
    print(f"model: {scorer.model_id}; {k} videos of {frames[0].shape} frames; torch threads {threads}; "
          f"max_batch_size {args.max_batch_size}")

    results: dict[tuple[str, int], dict] = {}
    # (a) in-process: the batch a replica would form from `clients` concurrent requests
    for clients in (1, 32):
        bs = min(clients, args.max_batch_size)
        n = args.requests if clients > 1 else max(32, args.requests // 8)
        lat, start = [], time.perf_counter()
        for i in range(0, n, bs):
            idx = [(i + j) % k for j in range(min(bs, n - i))]
            t0 = time.perf_counter()
            scorer.score([frames[x] for x in idx], [prompts[x] for x in idx])
            lat += [time.perf_counter() - t0] * len(idx)
        wall = time.perf_counter() - start
        results[("a in-process batched", clients)] = {
            "throughput": n / wall, "p50_ms": 1000 * statistics.median(lat), "p99_ms": 1000 * _percentile(lat, 0.99),
            "batch": bs}

    ray.init(num_cpus=max(2, int(args.replica_cpus)), include_dashboard=False, logging_level="ERROR")
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    settings = {"checkpoint": ckpt, "data_roots": [str(work)]}
    batched = serve.run(build_app(settings, max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait,
                                  max_ongoing_requests=64, num_cpus=args.replica_cpus),
                        name="batched", route_prefix="/batched")
    for clients in (1, 32):
        n = args.requests if clients > 1 else max(32, args.requests // 8)
        _drive(lambda i: batched.score.remote(prompts[i % k], frames=frames[i % k]).result(), 8, clients)  # warm
        results[("b Serve handle, batched", clients)] = _drive(
            lambda i: batched.score.remote(prompts[i % k], frames=frames[i % k]).result(), n, clients)
        with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=64)) as client:
            url = f"http://127.0.0.1:{args.port}/batched"
            results[("d HTTP upload (+decode), batched", clients)] = _drive(
                lambda i, c=client, u=url: _ok(post_video(c, u, uploads[i % k], prompts[i % k])),
                n, clients)
    serve.delete("batched")
    unbatched = serve.run(build_app(settings, max_batch_size=1, max_ongoing_requests=64, num_cpus=args.replica_cpus),
                          name="unbatched", route_prefix="/unbatched")
    for clients in (1, 32):
        n = args.requests if clients > 1 else max(32, args.requests // 8)
        _drive(lambda i: unbatched.score.remote(prompts[i % k], frames=frames[i % k]).result(), 8, clients)
        results[("c Serve handle, unbatched", clients)] = _drive(
            lambda i: unbatched.score.remote(prompts[i % k], frames=frames[i % k]).result(), n, clients)
    serve.shutdown()
    ray.shutdown()

    print("\n| path | clients | videos/s | p50 ms | p99 ms | mean batch |\n|---|---|---|---|---|---|")
    for (name, clients), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"| {name} | {clients} | {r['throughput']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['batch']:.1f} |")
    a32 = results[("a in-process batched", 32)]["throughput"]
    b32 = results[("b Serve handle, batched", 32)]["throughput"]
    c32 = results[("c Serve handle, unbatched", 32)]["throughput"]
    print(f"\n32 clients: (b)/(a) Serve batched / in-process batched = {b32 / a32:.2f}  (goal >= 0.8)")
    print(f"32 clients: (b)/(c) Serve batched / unbatched          = {b32 / c32:.2f}  (goal >= 1.5)")


if __name__ == "__main__":
    main()
