"""The seed's static split: the seed loop (``bench.seed_relations``, batches of 8 prompts, plain
``generate``) over N contiguous shards of the pairs, one process per GPU (``bench.static_split``).

    python -m bench.scaling_seed_split SPEC     (one shard; started by ``run``)
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from bench.harness import Texts
from bench.static_split import Generate, run_split, serve_shard

SEED_BATCH = 8  # the original's BATCH_SIZE


def run(gpus: list[str], pairs: list[dict], base: dict[str, Any], directory: Path) -> tuple[dict[str, Any], Texts]:
    """The seed over ``pairs`` split across ``gpus``: the entry (seconds, tail, busy times) and texts."""
    return run_split("bench.scaling_seed_split", gpus, pairs, base, directory)


def load(spec: dict, dtype, device: str) -> Generate:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from bench.seed_relations import seed_generate

    processor = AutoProcessor.from_pretrained(spec["model"])
    model = AutoModelForImageTextToText.from_pretrained(spec["model"], dtype=dtype, device_map=device)
    return lambda pairs: seed_generate(processor, model, pairs, spec["max_new_tokens"], SEED_BATCH)[0]


def warmup_pairs(pairs: list[dict]) -> list[dict]:
    """One pair, as ``bench.bench_relations`` warms the seed up."""
    return pairs[:1]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s shard %(message)s")
    serve_shard(sys.argv[1], load, warmup_pairs)
