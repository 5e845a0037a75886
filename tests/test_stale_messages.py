"""A resumed run leaves no message of it behind, and the pairs that were in flight go first.

The interrupted attempt is driven, not raced: its tasks are enqueued with no worker running,
and one is taken the way a worker takes it (moved into kombu's unacknowledged hash) by a
worker that is then gone, as a SIGKILL of the whole process group leaves it.
"""

from __future__ import annotations

import json
import time

import redis

from conftest import private_env, relations_counts, run_producer
from producer.embedded import EmbeddedRedis
from config import Settings
from producer.dispatch import celery_client
from producer.kombu_redis import (UNACKED_INDEX_KEY, UNACKED_KEY, queue_list_names, queued_messages,
                                  task_args, unacked_messages)
from producer.status import run_status, taken_keys
from shared.messages import RELATIONS_STAGE, RELATIONS_TASK
from shared.store import RunStore, connect

RUN = "resumed"


def queued_args(client: redis.Redis) -> list[list]:
    """The arguments of every task waiting in queue ``relations``, next to be taken first."""
    return [task_args(message) for _, _, message in queued_messages(client, "relations", {})]


def messages_of(client: redis.Redis, run_id: str) -> list:
    """Every message of the run in the queue's lists and in the unacknowledged hash."""
    waiting = [args for args in queued_args(client) if args[0] == run_id]
    taken = [m for m, _ in unacked_messages(client) if task_args(m)[0] == run_id]
    return waiting + taken


def take_and_vanish(client: redis.Redis) -> list[str]:
    """A worker takes the next task and dies holding it; returns the task's keys."""
    [raw] = client.brpop(["relations"], timeout=5)[1:]
    message = json.loads(raw)
    client.hset(UNACKED_KEY, "dead-worker-tag", json.dumps([message, "relations", "relations"]))
    client.zadd(UNACKED_INDEX_KEY, {"dead-worker-tag": time.time()})
    return task_args(message)[1]


def test_a_resumed_run_leaves_no_message_of_it_and_runs_the_pairs_in_flight_first(model_cache, sample,
                                                                                    tmp_path):
    stage1, input_path = sample
    pairs, _, descriptions = relations_counts(stage1, input_path)
    inputs = ("--stage1", str(stage1), "--input", str(input_path), "--run", RUN)
    with EmbeddedRedis(tmp_path / "redis") as server:
        env = private_env(server, model_cache, tmp_path / "work")
        client = connect(server.url)
        first = run_producer("enqueue", "relations", *inputs, env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        in_flight = take_and_vanish(client)
        # status counts the pairs of the task taken as in flight.
        [stage] = run_status(client, RUN, time.time(), taken_keys(client))["stages"]
        assert (stage["in_flight"], stage["done"]) == (len(in_flight), 0)
        celery_client(Settings(broker_url=server.url)).send_task(
            RELATIONS_TASK, args=["another-run", ["k"]], queue="relations")

        again = run_producer("enqueue", "relations", *inputs, env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        # Each pair queued once, the ones in flight first; nothing of the run taken; the
        # other run's task untouched.
        args = queued_args(client)
        ours = [keys for run_id, keys in args if run_id == RUN]
        assert sorted(k for keys in ours for k in keys) == sorted(set(k for keys in ours for k in keys))
        assert len([k for keys in ours for k in keys]) == pairs
        assert sorted(ours[0]) == sorted(in_flight)
        assert [a for a in args if a[0] != RUN] == [["another-run", ["k"]]]
        assert client.hlen(UNACKED_KEY) == 0 and client.zcard(UNACKED_INDEX_KEY) == 0

        done = run_producer("run", "relations", *inputs, "--local-workers", "--gpus", "cpu",
                            "--output", str(tmp_path / "report.json"), env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        store = RunStore(client, RUN)
        assert store.progress(RELATIONS_STAGE).done == pairs
        assert messages_of(client, RUN) == []
        assert all(client.llen(name) == 0 for name in queue_list_names("relations", {}))
        assert client.hlen(UNACKED_KEY) == 0
        # Nothing was generated twice: the stale messages never reached a worker.
        assert store.stats(RELATIONS_STAGE)["descriptions_generated"] == descriptions
