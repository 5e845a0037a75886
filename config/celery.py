"""Celery configuration derived from the settings, used by workers and producer alike."""

from __future__ import annotations

from kombu import Queue

from config.settings import Settings


def celery_config(settings: Settings) -> dict[str, object]:
    """The Celery settings every evalfleet process shares.

    Long GPU tasks must be neither hoarded nor lost: one message at a time per
    child (prefetch 1), acknowledged only after the task ran (late acks), and
    put back on the queue if the child executing it dies.
    """
    queues = (settings.queue_relations, settings.queue_edit, settings.queue_score)
    return {
        "broker_url": settings.broker,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout},
        # Only msgpack and JSON on the wire; a pickled message is rejected unexecuted.
        "task_serializer": "msgpack",
        "result_serializer": "msgpack",
        "event_serializer": "json",
        "accept_content": ["msgpack", "json"],
        "result_accept_content": ["msgpack", "json"],
        # Results live in evalfleet's own Redis store under idempotent keys.
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # A broker connection lost while a late-acked task runs: the message goes back to
        # the queue, so without this the task would run twice (here and on its redelivery).
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Redis refusing a write (MISCONF: its disk is full) when the worker acknowledges a task
        # or asks for the next one is a channel error: with this the worker reconnects, and goes
        # on once Redis writes again, instead of exiting ("Unrecoverable error: ResponseError").
        "broker_channel_error_retry": True,
        # Nothing blocks forever (a FIFO as an image path, a hung device): past the soft
        # limit the task fails its unfinished items; past the hard one the process is killed.
        "task_soft_time_limit": settings.task_time_limit,
        "task_time_limit": settings.task_hard_time_limit,
        "task_queues": tuple(Queue(name) for name in queues),
        "task_default_queue": settings.queue_relations,
        "task_create_missing_queues": False,
        # Events let Flower show workers and tasks.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
    }
