"""``python -m producer status``: queue depths, run progress with rate and ETA, workers and their models."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from conftest import relations_counts, run_producer
from producer.kombu_redis import queue_depths
from producer.rate import RATE_WINDOW_SECONDS, rate_and_eta
from producer.status import STALE_SECONDS, attach_heartbeats, format_status, read_heartbeats
from shared.messages import EDIT_TASK
from shared.store import WORKERS_KEY


def test_rate_and_eta_from_samples():
    now = 10_000.0
    # newest first: [time, done, failed]; 12 items finished in the last 60 s.
    samples = [[now - 10, 20, 2], [now - 40, 14, 1], [now - 70, 10, 0]]
    got = rate_and_eta(samples, remaining=24, now=now)
    assert got == {"rate_per_min": 12.0, "eta_seconds": 120.0, "last_progress_ago": 10.0}
    # One sample is not a rate; samples older than the window are not either.
    assert rate_and_eta(samples[:1], 24, now)["rate_per_min"] is None
    old = [[t - RATE_WINDOW_SECONDS, d, f] for t, d, f in samples]
    assert rate_and_eta(old, 24, now) == {"rate_per_min": None, "eta_seconds": None,
                                          "last_progress_ago": RATE_WINDOW_SECONDS + 10}
    assert rate_and_eta([], 0, now) == {"rate_per_min": None, "eta_seconds": 0.0,
                                        "last_progress_ago": None}


def test_queue_depth_counts_kombus_priority_lists(own_broker):
    server, app = own_broker
    for priority in (None, 5, 9):
        app.send_task(EDIT_TASK, args=["r", []], queue="edit", priority=priority)
    client = redis.Redis.from_url(server.url)
    assert client.llen("edit") == 1  # what a plain LLEN would (wrongly) report
    depths = queue_depths(client, ["relations", "edit"], {})
    client.close()
    assert depths == {"relations": {"waiting": 0, "reserved": 0}, "edit": {"waiting": 3, "reserved": 0}}


def test_heartbeats_of_gone_or_stale_processes_are_ignored(redis_client):
    now = 1_000_000.0
    beat = {"resident": ["vlm tiny"], "device": "cpu", "node": "a@h"}
    redis_client.hset(WORKERS_KEY, mapping={
        "h:11": json.dumps({**beat, "at": now - 5}),                        # alive, listed
        "h:12": json.dumps({**beat, "at": now - 5}),                        # child replaced
        "h:21": json.dumps({**beat, "node": "b@h", "at": now - STALE_SECONDS - 1}),  # stale
        "h:22": json.dumps({**beat, "node": "b@h", "at": now - 5}),         # recent
        "h:31": json.dumps({**beat, "node": "gone@h", "at": now - 5}),      # worker offline
        "h:41": json.dumps({**beat, "at": now - 2 * 86400}),                # forgotten
    })
    workers = [{"name": "a@h", "pool_pids": [11], "processes": []},
               {"name": "b@h", "pool_pids": None, "processes": []}]  # b did not list its pool
    attach_heartbeats(workers, read_heartbeats(redis_client, now))
    assert [p["process"] for p in workers[0]["processes"]] == ["h:11"]
    assert [p["process"] for p in workers[1]["processes"]] == ["h:22"]
    assert workers[0]["processes"][0]["resident"] == ["vlm tiny"]
    assert not redis_client.hexists(WORKERS_KEY, "h:41")
    redis_client.delete(WORKERS_KEY)
    assert read_heartbeats(redis_client, now) == {}


def test_status_of_a_finished_run_on_the_fleet(fleet, fleet_env, redis_client, sample):
    stage1, input_path = sample
    proc = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                        "--run", "watched", env=fleet_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_log = Path(fleet_env["EVALFLEET_WORK_DIR"]) / "logs" / "producer.log"
    assert "run watched finished: 0 item(s) failed" in run_log.read_text()
    logged = run_log.stat().st_size

    status_proc = run_producer("status", "--json", env=fleet_env, timeout=60)
    assert status_proc.returncode == 0, status_proc.stderr
    status = json.loads(status_proc.stdout)
    assert set(status["queues"]) == {"relations", "edit", "score"}
    assert status["queues"]["relations"] == {"waiting": 0, "reserved": 0}
    [run] = status["runs"]
    assert (run["run"], run["job"]) == ("watched", "relations")
    [stage] = run["stages"]
    pairs = relations_counts(stage1, input_path)[0]
    assert (stage["stage"], stage["done"], stage["failed"], stage["in_flight"], stage["total"]) == (
        "relations", pairs, 0, 0, pairs)
    # Five tasks each pushed a sample: enough for a measured rate; nothing is left to do.
    assert stage["rate_per_min"] > 0 and stage["eta_seconds"] == 0
    [worker] = [w for w in status["workers"] if w["name"].startswith("rel-cpu@")]
    assert worker["queues"] == ["relations"]
    assert worker["processed"]["evalfleet.relations.generate"] >= 5
    [process] = worker["processes"]  # concurrency 1: one child, holding the tiny Qwen3-VL
    assert process["resident"] == ["vlm tiny float32"] and process["device"] == "cpu"

    text = run_producer("status", "--run", "watched", env=fleet_env, timeout=60)
    assert text.returncode == 0, text.stderr
    assert "watched" in text.stdout and "finished" in text.stdout
    assert "rel-cpu@" in text.stdout and "vlm tiny float32" in text.stdout
    # Asked from another terminal, status wrote nothing into the run's log.
    assert run_log.stat().st_size == logged


def test_status_of_an_unknown_run_exits_2(fleet_env, redis_client):
    proc = run_producer("status", "--run", "nope", env=fleet_env, timeout=60)
    assert proc.returncode == 2 and "nope" in proc.stderr


def test_format_status_shows_an_unfinished_stage_and_no_workers():
    status = {"broker": "redis://:**@h:6379/0",
              "queues": {"relations": {"waiting": 4, "reserved": 1}},
              "runs": [{"run": "r1", "job": "relations", "created": 1.0, "stages": [
                  {"stage": "relations", "done": 6, "failed": 1, "in_flight": 2, "total": 13,
                   "rate_per_min": 3.5, "eta_seconds": 103.0, "last_progress_ago": 4.0}]}],
              "workers": []}
    text = format_status(status)
    header, row = [line.split() for line in text.splitlines() if line.startswith(("run ", "r1 "))]
    assert header[1:] == ["stage", "done", "failed", "in", "flight", "total", "pairs/min", "eta", "last"]
    assert row[1:] == ["relations", "6", "1", "2", "13", "3.5", "0:01:43", "0:00:04"]
    assert "no workers online" in text
    assert "redis://:**@h" in text

