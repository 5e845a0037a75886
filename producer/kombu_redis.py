"""What the producer reads of kombu's Redis transport that kombu does not publish as an API.

Celery's own ``inspect`` sees what live workers hold, but not what waits in a queue or what a
dead worker took: for those the producer reads the transport's Redis keys directly. They are
kombu internals (``kombu.transport.redis``), so they live here alone, and
``tests/test_kombu_redis.py`` checks them against a real broker: a kombu upgrade that changes
them fails that test, not a run.

- A queue is one Redis list per priority step: the plain name for step 0, then
  ``<queue><sep><step>`` (``relations\\x06\\x163``).
- Messages delivered to a consumer and not yet acknowledged are entries of one hash, each a
  JSON ``[message, exchange, routing key]``; the routing key is the queue's name. A sorted set
  of the same delivery tags orders them by delivery time (kombu restores the overdue ones).
- A message is a JSON object whose ``body`` is the task's ``[args, kwargs, embed]`` (Celery's
  protocol 2), serialized as ``content-type`` says and then base64-encoded.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import redis
from kombu.exceptions import KombuError
from kombu.serialization import loads
from kombu.transport.redis import PRIORITY_STEPS, Channel

# The hash of delivered, not yet acknowledged messages, and its index by delivery time.
UNACKED_KEY = Channel.unacked_key
UNACKED_INDEX_KEY = Channel.unacked_index_key
# The serializers evalfleet's processes accept (config/celery.py): a message in any other is
# never decoded here either.
ACCEPTED_CONTENT = {"application/json", "application/x-msgpack"}


def queue_list_names(queue: str, transport_options: dict[str, Any]) -> list[str]:
    """The Redis lists kombu uses for ``queue``: the plain name, then one per priority step."""
    steps = transport_options.get("priority_steps", PRIORITY_STEPS)
    sep = transport_options.get("sep", Channel.sep)
    return [queue if step == 0 else f"{queue}{sep}{step}" for step in steps]


def unacked_messages(broker: redis.Redis) -> Iterator[tuple[dict[str, Any], str]]:
    """(message, queue) of every delivered, unacknowledged message; entries of another shape are skipped."""
    for _, message, queue in unacked_entries(broker):
        yield message, queue


def unacked_entries(broker: redis.Redis) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(delivery tag, message, queue) of every delivered, unacknowledged message."""
    for tag, raw in broker.hgetall(UNACKED_KEY).items():
        try:
            message, _, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        if isinstance(message, dict) and isinstance(routing_key, str):
            yield tag, message, routing_key


def forget_unacked(broker: redis.Redis, tags: list[str]) -> None:
    """Drop delivered messages for good: kombu will neither restore nor expect them (an ack of
    one later deletes nothing)."""
    if tags:
        pipe = broker.pipeline(transaction=True)
        pipe.hdel(UNACKED_KEY, *tags)
        pipe.zrem(UNACKED_INDEX_KEY, *tags)
        pipe.execute()


def queued_messages(broker: redis.Redis, queue: str,
                    transport_options: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(list name, raw entry, message) of every message waiting in ``queue``, next to be taken first."""
    for name in queue_list_names(queue, transport_options):
        for raw in reversed(broker.lrange(name, 0, -1)):  # kombu pushes left, takes right
            try:
                message = json.loads(raw)
            except (ValueError, TypeError):
                continue
            if isinstance(message, dict):
                yield name, raw, message


def remove_queued(broker: redis.Redis, list_name: str, raw: str) -> bool:
    """Take one waiting message out of its list; False if a worker took it first."""
    return bool(broker.lrem(list_name, 1, raw))


def task_args(message: dict[str, Any]) -> list[Any] | None:
    """The task's positional arguments, or None for a message that is not a Celery task of
    an accepted serializer."""
    try:
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        decoded = loads(body, message.get("content-type"), message.get("content-encoding", "utf-8"),
                        accept=ACCEPTED_CONTENT)
        args = decoded[0]
    except (KeyError, TypeError, ValueError, IndexError, KombuError):
        return None
    return list(args) if isinstance(args, (list, tuple)) else None


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
