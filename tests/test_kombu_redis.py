"""The kombu internals the producer reads (``producer/kombu_redis.py``), checked on a real broker.

If a kombu upgrade renames the unacknowledged hash, changes the priority lists' names or the
shape of an unacked entry, these tests fail here, instead of ``status`` and the stall check
silently reading nothing.
"""

from __future__ import annotations

import redis
from kombu import Connection, Consumer, Exchange, Queue

from producer.kombu_redis import (UNACKED_INDEX_KEY, UNACKED_KEY, forget_unacked, queue_list_names,
                                  queued_messages, task_args, unacked_entries, unacked_messages)
from shared.messages import RELATIONS_TASK


def test_messages_of_every_priority_are_in_the_lists_named(own_broker):
    server, app = own_broker
    for priority in (None, 3, 9):
        app.send_task(RELATIONS_TASK, args=["r", []], queue="relations", priority=priority)
    client = redis.Redis.from_url(server.url)
    names = queue_list_names("relations", app.conf.broker_transport_options)
    lengths = {name: client.llen(name) for name in names}
    # Every message is in one of the lists named, and kombu uses no other list for the queue.
    others = [k for k in client.scan_iter("relations*") if k.decode() not in names]
    client.close()
    assert sum(lengths.values()) == 3 and not others, (lengths, others)
    assert len([n for n, length in lengths.items() if length]) > 1  # priorities use several lists


def test_a_delivered_unacknowledged_message_is_read_with_its_queue_and_task_id(own_broker):
    server, app = own_broker
    sent = app.send_task(RELATIONS_TASK, args=["r", []], queue="relations")
    received = []
    with Connection(server.url, transport_options=app.conf.broker_transport_options) as conn:
        queue = Queue("relations", Exchange("relations"), routing_key="relations")
        with Consumer(conn, [queue], callbacks=[lambda body, msg: received.append(msg)],
                      accept=["json", "msgpack"]):
            conn.drain_events(timeout=10)
        client = redis.Redis.from_url(server.url)
        assert client.hlen(UNACKED_KEY) == 1, "kombu no longer keeps unacked messages in this hash"
        found = list(unacked_messages(client))
        client.close()
        received[0].ack()
    assert [(m["headers"]["id"], q) for m, q in found] == [(sent.id, "relations")]


def test_waiting_messages_are_read_with_their_task_arguments_next_first(own_broker):
    server, app = own_broker
    for n in range(3):
        app.send_task(RELATIONS_TASK, args=["r", [f"key{n}"]], queue="relations")
    client = redis.Redis.from_url(server.url, decode_responses=True)
    found = [task_args(message) for _, _, message in queued_messages(client, "relations", {})]
    client.close()
    assert found == [["r", ["key0"]], ["r", ["key1"]], ["r", ["key2"]]]


def test_a_forgotten_unacknowledged_message_leaves_the_hash_and_its_index(own_broker):
    server, app = own_broker
    app.send_task(RELATIONS_TASK, args=["r", ["k"]], queue="relations")
    with Connection(server.url, transport_options=app.conf.broker_transport_options) as conn:
        queue = Queue("relations", Exchange("relations"), routing_key="relations")
        with Consumer(conn, [queue], callbacks=[lambda body, msg: None], accept=["json", "msgpack"]):
            conn.drain_events(timeout=10)
        client = redis.Redis.from_url(server.url, decode_responses=True)
        [(tag, message, queue_name)] = list(unacked_entries(client))
        assert (task_args(message), queue_name) == (["r", ["k"]], "relations")
        forget_unacked(client, [tag])
        left = client.hlen(UNACKED_KEY), client.zcard(UNACKED_INDEX_KEY)
        client.close()
    assert left == (0, 0)
