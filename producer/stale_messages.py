"""A run's messages left from an earlier attempt, taken out before its pending items are sent again.

A run interrupted (the producer killed, Ctrl-C, a Redis restart) leaves messages behind: tasks
still waiting in the queue, and the tasks the workers had taken, unacknowledged, which kombu
gives back only after the visibility timeout. Sending the pending items again on top of them
would leave the old ones to outlive the run (a later run's workers would take them first), so
they are removed first, and their items sent again with the rest: the items that were in
flight first, as they were the first to be taken. Only a task a live worker still holds (an
external fleet that kept working) stays, and its items are not sent again.

A worker may take a waiting message just before it is removed: then its items run twice,
and the results' idempotent keys keep one of each (shared/store.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import redis
from celery import Celery

from producer.kombu_redis import (forget_unacked, queued_messages, remove_queued, task_args,
                                  unacked_entries)

log = logging.getLogger(__name__)

# Seconds the workers have to say which tasks they hold.
INSPECT_TIMEOUT = 2.0


@dataclass(frozen=True)
class StaleMessages:
    """What an earlier attempt of a run left in one queue, once taken out."""

    in_flight: list[str] = field(default_factory=list)  # keys of the tasks taken, held by no live worker
    held: set[str] = field(default_factory=set)  # keys of the tasks a live worker holds
    removed: int = 0  # messages removed (waiting or taken)

    def split(self, pending: list[str]) -> tuple[list[str], list[str]]:
        """(the pending items that were in flight, the other pending items no live worker holds):
        sent in this order."""
        in_flight = set(self.in_flight)
        return ([k for k in pending if k in in_flight],
                [k for k in pending if k not in in_flight and k not in self.held])


def held_task_ids(app: Celery, timeout: float = INSPECT_TIMEOUT) -> set[str]:
    """Ids of the tasks the workers that answer hold: running, reserved or waiting to retry."""
    inspect = app.control.inspect(timeout=timeout)
    ids = set()
    for reply in (inspect.active(), inspect.reserved(), inspect.scheduled()):
        for tasks in (reply or {}).values():
            ids.update(t.get("id") or t.get("request", {}).get("id") for t in tasks)
    return ids


def take_out_stale_messages(app: Celery, broker: redis.Redis, queue: str, run_id: str) -> StaleMessages:
    """Remove the run's messages from ``queue`` (waiting, and taken by no live worker)."""
    options = dict(app.conf.broker_transport_options or {})
    removed = 0
    for list_name, raw, message in list(queued_messages(broker, queue, options)):
        if _run_keys(message, run_id) is not None and remove_queued(broker, list_name, raw):
            removed += 1
    taken = [(tag, message, keys) for tag, message, q in unacked_entries(broker)
             if q == queue and (keys := _run_keys(message, run_id)) is not None]
    held_ids = held_task_ids(app) if taken else set()  # ask the workers only when it matters
    stale = [(tag, keys) for tag, message, keys in taken if _task_id(message) not in held_ids]
    held = {key for _, message, keys in taken if _task_id(message) in held_ids for key in keys}
    forget_unacked(broker, [tag for tag, _ in stale])
    in_flight = [key for _, keys in stale for key in keys]
    removed += len(stale)
    if removed or held:
        log.info("%s: %d message(s) of an earlier attempt taken out of queue %r (%d item(s) were in "
                 "flight: sent first); %d item(s) a live worker holds", run_id, removed, queue,
                 len(in_flight), len(held))
    return StaleMessages(in_flight=in_flight, held=held, removed=removed)


def _task_id(message: dict) -> str | None:
    return message.get("headers", {}).get("id")


def _run_keys(message: dict, run_id: str) -> list[str] | None:
    """The item keys of a task message of ``run_id``; None for any other message."""
    args = task_args(message)
    if not args or len(args) < 2 or args[0] != run_id or not isinstance(args[1], list):
        return None
    return [str(key) for key in args[1]]
