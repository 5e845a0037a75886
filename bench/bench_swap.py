"""Swap benchmark: the residency pool against bytes / pinned bandwidth and the seed's .to() swap.

    python -m bench.bench_swap --out bench_swap.json

One process, one GPU, one model (Qwen3-VL-8B architecture, random bf16 weights), side by side:
1. seed style: ``model.to('cpu')`` then ``model.to('cuda')``, as the original pipeline did;
2. pinned host-to-device bandwidth, measured on a 4 GiB pinned buffer;
3. the residency pool: two models, a budget that holds one; steady-state swaps (after the
   first eviction has made the pinned host copy) are timed and compared with bytes / bandwidth.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from bench.harness import pinned_bandwidth_gbs, synchronized_seconds
from bench.real_models import pad_vocabulary, qwen3_vl_8b_config
from workers.models.tokenizer import build_tiny_tokenizer
from workers.residency import ResidencyPool, model_bytes


def build_model():
    from transformers import Qwen3VLForConditionalGeneration

    tokenizer = build_tiny_tokenizer()
    pad_vocabulary(tokenizer)
    with torch.device("cuda"):
        return Qwen3VLForConditionalGeneration._from_config(
            qwen3_vl_8b_config(tokenizer), dtype=torch.bfloat16)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench_swap.json")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    bandwidth = pinned_bandwidth_gbs()["h2d"]
    model_a, model_b = build_model(), build_model()
    nbytes = model_bytes({"m": model_a})
    seed_to_cpu = synchronized_seconds(lambda: model_a.to("cpu"))
    seed_to_cuda = synchronized_seconds(lambda: model_a.to("cuda"))

    pool = ResidencyPool(torch.device("cuda"), budget_bytes=int(nbytes * 1.5))
    pool.register("a", lambda: {"m": model_a})
    pool.register("b", lambda: {"m": model_b})
    pool.acquire("a")
    first_swap = synchronized_seconds(lambda: pool.acquire("b"))  # makes a's pinned host copy
    synchronized_seconds(lambda: pool.acquire("a"))  # makes b's
    steady = []
    for _ in range(args.rounds):
        steady.append(synchronized_seconds(lambda: pool.acquire("b")))
        steady.append(synchronized_seconds(lambda: pool.acquire("a")))
    swap = statistics.median(steady)
    ideal = nbytes / (bandwidth * 1e9)
    result = {
        "device": torch.cuda.get_device_name(), "model_bytes": nbytes,
        "pinned_h2d_gbs": round(bandwidth, 2),
        "seed_to_cpu_s": round(seed_to_cpu, 3), "seed_to_cuda_s": round(seed_to_cuda, 3),
        "seed_swap_s": round(seed_to_cpu + seed_to_cuda, 3),
        "pool_first_swap_s": round(first_swap, 3), "pool_swap_median_s": round(swap, 3),
        "pool_swaps_s": [round(s, 3) for s in steady], "ideal_s": round(ideal, 3),
        "swap_over_ideal": round(swap / ideal, 3),
        "seed_over_pool": round((seed_to_cpu + seed_to_cuda) / swap, 1),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
