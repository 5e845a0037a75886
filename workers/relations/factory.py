"""A run's relations generator, over this worker's resident copy of the run's model; or, for a
run with the endpoint backend, its client of the run's OpenAI-compatible server."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from config import Settings
from config.settings import RELATIONS_ENDPOINT
from shared.relations.run_settings import RelationsRunSettings
from workers.endpoints.client import EndpointClient, endpoint_url
from workers.errors import PermanentError
from workers.model_host import ModelHost
from workers.relations.endpoint import EndpointRelations
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
                                  cache_bytes=cache_bytes)
    pool.set_working_bytes(loaded.pool_name, cache_bytes, release=generator.decoder.release)
    return generator


def endpoint_relations(settings: Settings, run: RelationsRunSettings) -> EndpointRelations:
    """The run's endpoint with the run's generation settings; ``settings`` are this worker's
    (how many requests at once, their timeout and retries, the URL's password)."""
    url = endpoint_url(run.relations_endpoint_url, settings.relations_endpoint_url, RELATIONS_ENDPOINT)
    client = _endpoint_client(settings, url, run.relations_endpoint_model, run.relations_endpoint_api_key_env)
    return EndpointRelations(client, max_new_tokens=run.max_new_tokens, temperature=run.temperature)


@functools.lru_cache(maxsize=4)
def _endpoint_client(settings: Settings, url: str, model: str, api_key_env: str) -> EndpointClient:
    """One client per endpoint and process (its connections and threads serve every task)."""
    try:
        return EndpointClient(url, model, what="the relations endpoint", setting=RELATIONS_ENDPOINT,
                              api_key_env=api_key_env, concurrency=settings.relations_endpoint_concurrency,
                              timeout_seconds=settings.relations_endpoint_timeout_seconds,
                              max_retries=settings.relations_endpoint_max_retries)
    except KeyError as exc:
        raise PermanentError(str(exc.args[0])) from None
