"""The product's decoder under the static split: ``RelationGenerator`` per image (chunks of 16
pairs, as the producer sends tasks) over N contiguous shards of the pairs, one process per GPU
(``bench.static_split``). Against the fleet it shows the scheduling effect (same decoder, other
scheduling), against the seed's split the per-step speed (same scheduling, other decoder).

    python -m bench.scaling_decoder_split SPEC     (one shard; started by ``run``)
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from bench.harness import Texts
from bench.relations_workload import CHUNK_PAIRS
from bench.static_split import Generate, run_split, serve_shard
from shared.keys import normalize_image_id, relation_key


def run(gpus: list[str], pairs: list[dict], base: dict[str, Any], directory: Path) -> tuple[dict[str, Any], Texts]:
    """The decoder over ``pairs`` split across ``gpus``: the entry (seconds, tail, busy times) and texts."""
    return run_split("bench.scaling_decoder_split", gpus, pairs, base, directory)


def load(spec: dict, dtype, device: str) -> Generate:
    import torch

    from workers.models.loading import load_vlm
    from workers.relations.generator import RelationGenerator

    processor, model = load_vlm(spec["model"], revision="", dtype=dtype, device=torch.device(device))
    generator = RelationGenerator(processor, model, max_new_tokens=spec["max_new_tokens"], temperature=0.0)
    return lambda pairs: decode_by_image(generator, pairs)


def warmup_pairs(pairs: list[dict]) -> list[dict]:
    """The largest and the smallest image group, so the batch-64 storage and the remainder
    buckets are captured before the go."""
    if not pairs:
        return pairs
    groups = image_chunks(pairs)
    return max(groups, key=len) + min(groups, key=len)


def image_chunks(pairs: list[dict]) -> list[list[dict]]:
    """As the producer sends tasks: per image, at most CHUNK_PAIRS pairs each."""
    by_image: dict[str, list[dict]] = {}
    for pair in pairs:
        by_image.setdefault(normalize_image_id(pair["image_id"]), []).append(pair)
    return [group[i:i + CHUNK_PAIRS] for group in by_image.values() for i in range(0, len(group), CHUNK_PAIRS)]


def decode_by_image(generator, pairs: list[dict]) -> Texts:
    """What a worker's task does (workers/tasks/relations.py): one image, all its prompts, batched."""
    from shared.images import open_image
    from shared.relations.prompt import build_relation_prompt

    out: Texts = {}
    for chunk in image_chunks(pairs):
        image = open_image(chunk[0]["image_path"])
        jobs = [(relation_key(p["image_id"], p["subject"], p["object"]), t["predicate"],
                 build_relation_prompt(p["subject_obj"], p["object_obj"], t["predicate"],
                                       image.width, image.height))
                for p in chunk for t in p["stage1_top_k"]]
        texts = generator.generate(image, [prompt for _, _, prompt in jobs], seed=0)
        out.update({(key, predicate): text for (key, predicate, _), text in zip(jobs, texts)})
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s shard %(message)s")
    serve_shard(sys.argv[1], load, warmup_pairs)
