"""The promise: every item ends done or failed, and the producer never waits in silence.

End to end with real processes (tasks that raise or block: tests/test_task_failures.py):
items whose messages are gone fail once the stage has stalled;
settings and paths that would fail every item, or the run at its end, stop the command
at its start with exit 2, named, before anything is registered.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from conftest import private_env, read_json, run_producer, started_fleet, wait_until
from producer.cli import EXIT_USAGE, main
from producer.embedded import EmbeddedRedis
from producer.relations.sample import write_relations_sample
from shared.relations.data import prepare_data_for_inference
from shared.store import connect


def test_items_whose_messages_are_gone_fail_once_the_stage_stalls(tmp_path):
    """No worker, and the queue purged: nothing will ever finish these items."""
    stage1, input_path = write_relations_sample(tmp_path / "sample")
    pairs = prepare_data_for_inference(stage1, input_path, 10).pairs
    images = {str(p["image_id"]) for p in pairs}
    output = tmp_path / "out.json"
    with EmbeddedRedis(tmp_path / "redis") as server:
        env = private_env(server, tmp_path / "models", tmp_path / "work", EVALFLEET_STALL_SECONDS="2")
        client = connect(server.url)
        producer = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                                "--run", "purged", "--output", str(output), env=env, wait=False)
        # One task per image (the sample has fewer pairs per image than a chunk holds).
        wait_until(lambda: client.llen("relations") == len(images), 60, "every task enqueued")
        client.delete("relations")
        # The first stall sends every unfinished item again, one task each: purged again.
        wait_until(lambda: client.llen("relations") == len(pairs), 60, "the items sent again")
        client.delete("relations")
        out, _ = producer.communicate(timeout=60)
    assert producer.returncode == 1, out
    report = read_json(output)
    assert report["results"] == [] and len(report["failed"]) == len(pairs)
    for failure in report["failed"]:
        assert "no task holds this item" in failure["reason"] and "EVALFLEET_STALL_SECONDS" in failure["reason"]
    assert "sending its %d unfinished item(s) again" % len(pairs) in out and "will never finish" in out


def test_a_message_stranded_by_a_redis_restart_is_sent_again(model_cache, tmp_path):
    """A task delivered, then cancelled by a Redis restart: its message stays unacknowledged until
    the visibility timeout (an hour). Here the worker that took it is simply gone: no worker
    holds it, so the stall sends its items again and the run completes."""
    stage1, input_path = write_relations_sample(tmp_path / "sample")
    pairs = prepare_data_for_inference(stage1, input_path, 10).pairs
    output = tmp_path / "out.json"
    with EmbeddedRedis(tmp_path / "redis") as server:
        env = private_env(server, model_cache, tmp_path / "work", EVALFLEET_STALL_SECONDS="3")
        client = connect(server.url)
        producer = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                                "--run", "stranded", "--output", str(output), env=env, wait=False)
        wait_until(lambda: client.llen("relations") > 0, 60, "the tasks enqueued")
        # A worker that took a message and vanished with the Redis connection: the message
        # is in the unacknowledged hash, and nobody holds it.
        [raw] = client.brpop(["relations"], timeout=5)[1:]
        client.hset("unacked", "stranded-tag", json.dumps([json.loads(raw), "relations", "relations"]))
        client.zadd("unacked_index", {"stranded-tag": time.time()})
        with started_fleet(env, ["relations"], tmp_path, name="stranded"):
            out, _ = producer.communicate(timeout=240)
    assert producer.returncode == 0, out
    assert "unfinished item(s) again" in out
    report = read_json(output)
    assert report["failed"] == [] and len(report["results"]) == len(pairs)


def cli(monkeypatch, tmp_path, *args: str, **env: str) -> int:
    """``python -m producer ...`` in this process, with only the given EVALFLEET_* variables."""
    for name in list(os.environ):
        if name.startswith("EVALFLEET_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EVALFLEET_WORK_DIR", str(tmp_path / "work"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return main(list(args))


def error_lines(capsys, caplog) -> list[str]:
    """The command's ERROR messages: on the terminal once it has set up its own log handlers
    (they replace pytest's), in pytest's log capture when it stops before that."""
    terminal = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    return terminal or [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


@pytest.mark.parametrize("job, env, named", [
    ("editbench", {"EVALFLEET_PROMPTS_DIR": "/nonexistent/prompts"}, "EVALFLEET_PROMPTS_DIR"),
    ("relations", {"EVALFLEET_RELATIONS_MODEL": "/nonexistent/model"}, "EVALFLEET_RELATIONS_MODEL"),
    ("editbench", {"EVALFLEET_EDITOR_MODEL": "/nonexistent/editor"}, "EVALFLEET_EDITOR_MODEL"),
    ("editbench", {"EVALFLEET_JUDGE_MODEL": "./no/such/judge"}, "EVALFLEET_JUDGE_MODEL"),
    ("relations", {"EVALFLEET_TEMPERATURE": "nan"}, "EVALFLEET_TEMPERATURE"),
    ("relations", {"EVALFLEET_TEMPERATURE": "inf"}, "EVALFLEET_TEMPERATURE"),
    ("relations", {"EVALFLEET_BROKER_URL": "localhost:6379"}, "EVALFLEET_BROKER_URL"),
    ("relations", {"EVALFLEET_BROKER_URL": "not a url"}, "EVALFLEET_BROKER_URL"),
])
def test_a_setting_that_would_fail_every_item_stops_the_run_at_start(monkeypatch, capsys, caplog, tmp_path, job,
                                                                       env, named):
    assert cli(monkeypatch, tmp_path, "run", job, **env) == EXIT_USAGE
    [message] = error_lines(capsys, caplog)
    assert named in message and "\n" not in message
    assert not (tmp_path / "work" / "redis").exists()  # nothing started, nothing registered


@pytest.mark.parametrize("case", ["output-is-a-directory", "output-parent-is-a-file",
                                  "work-dir-is-a-file", "work-dir-not-writable"])
def test_an_unusable_path_stops_the_run_before_any_work(monkeypatch, capsys, caplog, tmp_path, case):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "locked").mkdir(mode=0o500)
    args, env, named = {
        "output-is-a-directory": (["--output", str(tmp_path)], {}, "--output"),
        "output-parent-is-a-file": (["--output", str(tmp_path / "a-file" / "r.json")], {}, "--output"),
        "work-dir-is-a-file": ([], {"EVALFLEET_WORK_DIR": str(tmp_path / "a-file")}, "EVALFLEET_WORK_DIR"),
        "work-dir-not-writable": ([], {"EVALFLEET_WORK_DIR": str(tmp_path / "locked" / "w")},
                                  "EVALFLEET_WORK_DIR"),
    }[case]
    if case == "work-dir-not-writable" and os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    try:
        assert cli(monkeypatch, tmp_path, "run", "relations", *args, **env) == EXIT_USAGE
    finally:
        (tmp_path / "locked").chmod(0o700)
    [message] = error_lines(capsys, caplog)
    assert named in message and "\n" not in message
    assert not (tmp_path / "work" / "redis").exists()
