"""Weight sync of the online loop: one ``ray.put`` of an adapter, loaded by N actors, vs a local
``torch.save`` + ``torch.load`` of the same state, side by side.

    python benchmarks/weight_sync.py [--mb 94] [--actors 2] [--repeats 3]

The payload is synthetic: bf16 tensors of the Wan2.1-1.3B LoRA r=64 size (~94 MB: 30 blocks x 2 attentions x
q/k/v/o x (A 64x1536 + B 1536x64)). Each actor copies every tensor (as ``set_peft_model_state_dict`` would), so
the object store's zero-copy reads are not counted as free.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def payload(mb: float):
    import torch

    n = max(1, int(mb * 2**20 / (2 * 2 * 64 * 1536)))  # A and B of r=64 x 1536, bf16
    gen = torch.Generator().manual_seed(0)
    state = {}
    for i in range(n):
        state[f"l{i}.lora_A.weight"] = torch.randn(64, 1536, generator=gen).to(torch.bfloat16)
        state[f"l{i}.lora_B.weight"] = torch.randn(1536, 64, generator=gen).to(torch.bfloat16)
    return {"state": state, "rank": 64, "alpha": 128.0}


class Receiver:
    def load(self, version: int, policy: dict) -> int:
        self.state = {k: v.clone() for k, v in policy["state"].items()}
        return version


def main() -> None:
    import ray
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=94.0)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    data = payload(args.mb)
    nbytes = sum(v.numel() * v.element_size() for v in data["state"].values())
    actors = [ray.remote(Receiver).options(num_cpus=0).remote() for _ in range(args.actors)]
    ray.get([a.load.remote(0, {"state": {}}) for a in actors])
    sync, local = [], []
    for v in range(1, args.repeats + 1):
        t = time.perf_counter()
        ref = ray.put(data)
        assert ray.get([a.load.remote(v, ref) for a in actors], timeout=300) == [v] * args.actors
        sync.append(time.perf_counter() - t)
        del ref
        with tempfile.NamedTemporaryFile(suffix=".pt") as f:
            t = time.perf_counter()
            torch.save(data, f.name)
            loaded = torch.load(f.name, weights_only=True)
            local.append(time.perf_counter() - t)
        assert loaded["state"].keys() == data["state"].keys()
    s, lo = statistics.median(sync), statistics.median(local)
    print(f"payload {nbytes / 2**20:.1f} MiB, {args.actors} actors, median of {args.repeats}")
    print(f"ray.put + {args.actors} actors load : {s:.3f} s")
    print(f"torch.save + torch.load (1 local): {lo:.3f} s")
    print(f"ratio sync / local save+load     : {s / lo:.2f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
