"""Ctrl-C and SIGTERM in one-command mode.

A signal to the producer's whole process group (what a terminal's Ctrl-C sends) stops the local
workers first, while the embedded Redis is still there, then Redis; the producer exits 130 (SIGINT)
or 143 (SIGTERM), leaves no process behind, and the same command resumes without redoing anything.
A second signal stops the workers at once. A score task is held in flight by a judge endpoint that
answers only when the test says so (tests/held_judge.py): every state is waited for, none raced.
"""

from __future__ import annotations

import contextlib
import os
import signal

import psutil
import pytest

from conftest import wait_until
from held_judge import OneCommandRun, held_judge, in_flight

# What a worker logs when Redis went away before it (the 60-second stop this file guards against).
LOST_REDIS = ("Cannot connect to redis", "Connection refused", "Error 111", "broker lost")


def assert_all_gone(processes: list[psutil.Process]) -> None:
    _, alive = psutil.wait_procs(processes, timeout=10)  # the producer waited for each already
    try:
        assert alive == [], f"left behind: {alive}"
    finally:
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


@pytest.fixture
def judge():
    with held_judge() as running:
        yield running


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_process_group_stops_the_workers_before_redis_and_the_rerun_redoes_nothing(
        model_cache, tmp_path, judge, sig):
    run = OneCommandRun(tmp_path, model_cache, judge)
    producer = run.start()
    children = in_flight(producer, judge)
    os.killpg(producer.pid, sig)
    # It says at once what it waits for: the task in flight is still held.
    wait_until(lambda: "stopping the local workers" in run.log("producer.log"), 60, "the stopping line")
    # The workers stop (Celery's warm shutdown) and wait for their running task, which waits for
    # the judge: Redis must still be up, so that when the judge answers, the task stores its score.
    wait_until(lambda: "Warm shutdown" in run.log("workers.log"), 60, "the workers' warm shutdown")
    judge.released.set()
    out, _ = producer.communicate(timeout=120)
    assert producer.returncode == 128 + sig, out
    assert "run the same command again to resume" in out
    assert_all_gone(children)
    workers_log = run.log("workers.log")
    assert not [line for line in workers_log.splitlines() if any(m in line for m in LOST_REDIS)], workers_log
    # The task in flight finished (with Redis there to take its score), and only once.
    assert run.counts() == (1, 1, 1, 1)

    rerun = run.start()
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    assert run.counts() == (1, 1, 1, 1)  # every item done, each once
    assert judge.requests == 1


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT-SIGINT", "SIGINT-SIGTERM"])
def test_a_second_signal_stops_the_workers_at_once_and_the_rerun_finishes(model_cache, tmp_path, judge, second):
    run = OneCommandRun(tmp_path, model_cache, judge)
    producer = run.start()
    children = in_flight(producer, judge)
    os.killpg(producer.pid, signal.SIGINT)
    wait_until(lambda: "Warm shutdown" in run.log("workers.log"), 60, "the workers' warm shutdown")
    # The running task waits for a judge that never answers: only the second signal ends it.
    os.killpg(producer.pid, second)
    out, _ = producer.communicate(timeout=30)  # the first signal alone would wait 60 s for the task
    assert producer.returncode == 130, out  # the first signal's code
    assert f"{signal.Signals(second).name} again: stopping at once" in out
    assert_all_gone(children)
    assert run.counts() == (1, 1, 0, 0)  # the killed task stored nothing; its message stays

    judge.released.set()
    rerun = run.start()
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    assert run.counts() == (1, 1, 1, 1)  # the edit was not redone; the score was made once
