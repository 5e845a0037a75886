"""A run's relations generator, over this worker's resident copy of the run's model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workers.model_host import ModelHost

if TYPE_CHECKING:
    from workers.relations.generator import RelationGenerator

# Share of the memory the weights leave that the relations decoder's KV cache may hold.
DECODER_CACHE_FRACTION = 0.9


def relation_generator(host: ModelHost, meta: dict[str, Any]) -> "RelationGenerator":
    """A generator with the run's settings over this process's copy of the run's model."""
    from workers.models.loading import RELATIONS_MODEL_SETTING
    from workers.models.vlm import vlm
    from workers.relations.generator import RelationGenerator

    loaded = vlm(host, meta, meta["relations_model"], RELATIONS_MODEL_SETTING)
    pool = host.pool()
    # The decoder's cache may take what the weights leave of the budget, less room for the
    # step's activations and logits; the pool counts it and frees it when the model leaves.
    cache_bytes = int(pool.room_for_working(loaded.pool_name) * DECODER_CACHE_FRACTION)
    generator = RelationGenerator(loaded.processor, loaded.model,
                                  max_new_tokens=int(meta["max_new_tokens"]),
                                  temperature=float(meta["temperature"]),
                                  max_batch=int(meta.get("max_batch", 512)),
                                  cache_bytes=cache_bytes)
    pool.set_working_bytes(loaded.pool_name, cache_bytes, release=generator.decoder.release)
    return generator
