"""Flower (``celery -A workers flower``) watches the fleet with the project's settings (JSON events)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from conftest import ROOT, run_producer, wait_until
from producer.embedded import free_port

USER, PASSWORD = "ops", "s3cret"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


@pytest.fixture(scope="module")
def flower(fleet_env, tmp_path_factory):
    """A real Flower process on a free port, with basic auth, over the session's Redis."""
    port = free_port()
    env = {**os.environ, **fleet_env}
    log_path = tmp_path_factory.mktemp("flower") / "flower.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={port}",
         "--address=127.0.0.1", f"--basic-auth={USER}:{PASSWORD}", "--persistent=False"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"Flower exited with {proc.returncode}:\n{log_path.read_text()}")
        return get(f"{base}/healthcheck")[0] == 200

    try:
        wait_until(serving, 60, "Flower to serve", interval=0.5)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def worker_online_metric(base: str, prefix: str) -> bool:
    """Flower counts a worker online once its event stream has a heartbeat from it."""
    _, metrics = get(f"{base}/metrics")
    return any(line.startswith(f'flower_worker_online{{worker="{prefix}') and line.endswith(" 1.0")
               for line in metrics.splitlines())


def test_flower_shows_workers_tasks_and_metrics(fleet, fleet_env, redis_client, flower, sample):
    # Tasks before Flower listens are not in its history: wait until its event stream is live.
    wait_until(lambda: worker_online_metric(flower, "rel-cpu@"), 60,
               "Flower to receive the worker's heartbeat", interval=0.5)
    stage1, input_path = sample
    proc = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                        "--run", "flowered", env=fleet_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "in 5 tasks" in proc.stderr

    def our_tasks():
        status, body = get(f"{flower}/api/tasks?taskname=evalfleet.relations.generate", AUTH)
        assert status == 200, body
        tasks = [t for t in json.loads(body).values() if "'flowered'" in t["args"]]
        return tasks if len(tasks) == 5 and all(t["state"] == "SUCCESS" for t in tasks) else None

    tasks = wait_until(our_tasks, 60, "the run's 5 tasks to show as SUCCESS", interval=0.5)
    assert {t["worker"].split("@")[0] for t in tasks} == {"rel-cpu"}
    assert all(t["result"].startswith("{'generated':") for t in tasks)

    status, body = get(f"{flower}/api/workers?refresh=1", AUTH)
    assert status == 200, body
    [(name, worker)] = [(n, w) for n, w in json.loads(body).items() if n.startswith("rel-cpu@")]
    assert "evalfleet.relations.generate" in worker["registered"]
    assert [q["name"] for q in worker["active_queues"]] == ["relations"]

    _, metrics = get(f"{flower}/metrics")
    succeeded = [line for line in metrics.splitlines()
                 if line.startswith("flower_events_total{")
                 and 'task="evalfleet.relations.generate"' in line and 'type="task-succeeded"' in line
                 and f'worker="{name}"' in line]
    assert len(succeeded) == 1 and float(succeeded[0].rsplit(" ", 1)[1]) >= 5


def test_flower_api_needs_the_basic_auth_credentials(flower):
    assert get(f"{flower}/api/workers")[0] == 401
    assert get(f"{flower}/api/tasks")[0] == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"ops:wrong").decode()}
    assert get(f"{flower}/api/workers", wrong)[0] == 401
    assert get(f"{flower}/api/workers", AUTH)[0] == 200
    # Flower serves /metrics (for Prometheus) and /healthcheck without auth, by design:
    # hence the port stays on 127.0.0.1 (Procfile, docker-compose.yml).
    assert get(f"{flower}/metrics")[0] == 200
