"""A run's relations generator, over this worker's resident copy of the run's model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.relations.run_settings import RelationsRunSettings
from workers.model_host import ModelHost
from workers.run_settings import run_dtype

if TYPE_CHECKING:
    from workers.relations.generator import RelationGenerator

# Share of the memory the weights leave that the relations decoder's KV cache may hold.
DECODER_CACHE_FRACTION = 0.9


def relation_generator(host: ModelHost, run: RelationsRunSettings) -> "RelationGenerator":
    """A generator with the run's settings over this process's copy of the run's model."""
    from workers.models.loading import RELATIONS_MODEL_SETTING
    from workers.models.vlm import vlm
    from workers.relations.generator import RelationGenerator

    loaded = vlm(host, run.relations_model, run.model_revision,
                 run_dtype(host.store.run_id, run.dtype, host.device), RELATIONS_MODEL_SETTING)
    pool = host.pool()
    # The decoder's cache may take what the weights leave of the budget, less room for the
    # step's activations and logits; the pool counts it and frees it when the model leaves.
    cache_bytes = int(pool.room_for_working(loaded.pool_name) * DECODER_CACHE_FRACTION)
    generator = RelationGenerator(loaded.processor, loaded.model, max_new_tokens=run.max_new_tokens,
                                  temperature=run.temperature, max_batch=run.max_batch,
                                  cache_bytes=cache_bytes, engine=run.relations_engine)
    pool.set_working_bytes(loaded.pool_name, cache_bytes, release=generator.decoder.release)
    return generator
