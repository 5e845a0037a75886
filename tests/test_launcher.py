"""``python -m workers launch``: one worker per GPU, signals forwarded, a death stops the rest.

Two fake "GPUs" (indices 0 and 1) on the CPU: each worker gets CUDA_VISIBLE_DEVICES=<index>,
torch sees no CUDA device, and the tiny model runs on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import psutil
import pytest

from config import Settings
from conftest import ROOT, run_producer, wait_for_workers
from producer.dispatch import celery_client
from producer.embedded import EmbeddedRedis
from workers import launch
from workers.launch import plan_workers


def test_plan_all_on_a_machine_without_gpus_is_one_cpu_worker(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)  # no nvidia-smi
    [spec] = plan_workers("all", ["relations"], 2, "INFO")
    assert (spec.gpu, spec.hostname, spec.concurrency) == ("cpu", "cpu@%h", 2)
    assert spec.environ()["CUDA_VISIBLE_DEVICES"] == ""  # hides any GPU from a CPU worker

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    specs = plan_workers("all", ["relations", "edit"], 1, "INFO", prefix="a-")
    assert [s.hostname for s in specs] == ["a-gpu2@%h", "a-gpu3@%h"]
    assert [s.environ()["CUDA_VISIBLE_DEVICES"] for s in specs] == ["2", "3"]
    assert "relations,edit" in specs[0].command()
    assert [s.gpu for s in plan_workers("cpu", ["relations"], 1, "INFO")] == ["cpu"]


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of this test's own: no session worker may take its tasks."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server


@contextlib.contextmanager
def launcher(env: dict[str, str], log_path):
    cmd = [sys.executable, "-m", "workers", "launch", "--gpus", "0,1", "--workers-per-gpu", "1",
           "-Q", "relations", "--name-prefix", "t-"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_workers(env["EVALFLEET_BROKER_URL"], "t-", 2)
        yield proc
    finally:
        if proc.poll() is None:  # the test failed half way: leave nothing behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def node_names(broker_url: str) -> set[str]:
    replies = celery_client(Settings(broker_url=broker_url)).control.ping(timeout=1)
    return {name.split("@")[0] for reply in replies for name in reply}


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def wait_gone(processes: list[psutil.Process], timeout: float = 30) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for proc in alive:  # keep the machine clean even when the assertion below fails
        proc.kill()
    return alive


def test_two_gpu_workers_share_a_run_and_stop_on_sigterm(own_redis, fleet_env, sample, tmp_path):
    env = {**fleet_env, "EVALFLEET_BROKER_URL": own_redis.url}
    with launcher(env, tmp_path / "launcher.log") as proc:
        assert node_names(own_redis.url) == {"t-gpu0", "t-gpu1"}
        stage1, input_path = sample
        run = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                           env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        # Celery's own count of the tasks each worker accepted: both took part.
        stats = celery_client(Settings(broker_url=own_redis.url)).control.inspect(timeout=1).stats()
        taken = {name.split("@")[0]: s["total"].get("evalfleet.relations.generate", 0)
                 for name, s in stats.items()}
        assert set(taken) == {"t-gpu0", "t-gpu1"} and all(taken.values()), taken
        assert sum(taken.values()) == 5

        processes = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "launcher.log").read_text()[-3000:]
        assert wait_gone(processes) == []


def test_a_dead_worker_stops_the_launcher_and_the_other_worker(own_redis, fleet_env, tmp_path):
    env = {**fleet_env, "EVALFLEET_BROKER_URL": own_redis.url}
    with launcher(env, tmp_path / "launcher.log") as proc:
        processes = descendants(proc.pid)
        workers = {p.pid: p for p in psutil.Process(proc.pid).children()}
        assert len(workers) == 2
        victim = next(p for p in workers.values() if "t-gpu0@%h" in p.cmdline())
        victim.kill()
        assert proc.wait(timeout=60) == 1
        assert wait_gone(processes) == []
        assert node_names(own_redis.url) == set()
