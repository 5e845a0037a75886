"""What the producer reads of kombu's Redis transport that kombu does not publish as an API.

Celery's own ``inspect`` sees what live workers hold, but not what waits in a queue or what a
dead worker took: for those the producer reads the transport's Redis keys directly. They are
kombu internals (``kombu.transport.redis``), so they live here alone, and
``tests/test_kombu_redis.py`` checks them against a real broker: a kombu upgrade that changes
them fails that test, not a run.

- A queue is one Redis list per priority step: the plain name for step 0, then
  ``<queue><sep><step>`` (``relations\\x06\\x163``).
- Messages delivered to a consumer and not yet acknowledged are entries of one hash, each a
  JSON ``[message, exchange, routing key]``; the routing key is the queue's name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel

# The hash of delivered, not yet acknowledged messages.
UNACKED_KEY = Channel.unacked_key


def queue_list_names(queue: str, transport_options: dict[str, Any]) -> list[str]:
    """The Redis lists kombu uses for ``queue``: the plain name, then one per priority step."""
    steps = transport_options.get("priority_steps", PRIORITY_STEPS)
    sep = transport_options.get("sep", Channel.sep)
    return [queue if step == 0 else f"{queue}{sep}{step}" for step in steps]


def unacked_messages(broker: redis.Redis) -> Iterator[tuple[dict[str, Any], str]]:
    """(message, queue) of every delivered, unacknowledged message; entries of another shape are skipped."""
    for raw in broker.hvals(UNACKED_KEY):
        try:
            message, _, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        if isinstance(message, dict) and isinstance(routing_key, str):
            yield message, routing_key


def queue_depths(broker: redis.Redis, queues: list[str],
                 transport_options: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per queue: ``waiting`` (in the lists) and ``reserved`` (taken by a worker, not acked)."""
    pipe = broker.pipeline(transaction=False)
    for queue in queues:
        for name in queue_list_names(queue, transport_options):
            pipe.llen(name)
    lengths = iter(pipe.execute())
    steps = len(queue_list_names("q", transport_options))
    depths = {q: {"waiting": sum(next(lengths) for _ in range(steps)), "reserved": 0} for q in queues}
    for _, queue in unacked_messages(broker):
        if queue in depths:
            depths[queue]["reserved"] += 1
    return depths
