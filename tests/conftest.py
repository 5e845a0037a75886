"""Real processes only: a redis-server on a free port and real Celery workers running the tiny model."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from kombu.serialization import loads as kombu_loads, prepare_accept_content

from config import TINY_MODEL, Settings
from producer.dispatch import celery_client
from producer.embedded import PASSWORD_FILE, EmbeddedRedis, LocalFleet
from producer.kombu_redis import unacked_messages
from producer.editbench.sample import write_editbench_sample
from producer.relations.sample import write_relations_sample
from shared.messages import EDIT_STAGE, EDIT_TASK, RELATIONS_STAGE, RELATIONS_TASK, SCORE_STAGE, SCORE_TASK
from shared.relations.data import prepare_data_for_inference
from shared.store import RunStore, connect
from transformers_serve import served
from waiting import wait_until  # noqa: F401  (the tests import it from here)

ROOT = Path(__file__).resolve().parents[1]

# Short generations keep the suite fast on a 2-core CPU; everything else is the default.
# EVALFLEET_TASK_PROMPTS=16: every sample image (2-10 prompts a pair, 2-3 pairs) has tasks
# of its own, so runs have several tasks for kill points and workers to share.
FAST = {"EVALFLEET_MAX_NEW_TOKENS": "8", "EVALFLEET_POLL_INTERVAL_SECONDS": "0.2", "EVALFLEET_TASK_PROMPTS": "16",
        "EVALFLEET_RETRY_BACKOFF_SECONDS": "1"}


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """Tiny models are built once per session, by the first worker that needs them."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def fleet_env(redis_server, model_cache, tmp_path_factory) -> dict[str, str]:
    """Environment of every process that talks to the session's Redis."""
    return {**FAST, "EVALFLEET_BROKER_URL": redis_server.url,
            "EVALFLEET_MODEL_CACHE": str(model_cache),
            "EVALFLEET_WORK_DIR": str(tmp_path_factory.mktemp("fleet-work"))}


@contextlib.contextmanager
def started_fleet(env: dict[str, str], queues: list[str], log_dir: Path, gpus: str = "cpu",
                  name: str = "test"):
    """A launcher (``python -m workers launch``) whose workers answer before we go on."""
    prefix = f"{name}-"
    with LocalFleet(env, queues, log_dir / "workers.log", gpus=gpus, name_prefix=prefix) as running:
        wait_for_workers(env["EVALFLEET_BROKER_URL"], prefix, 1 if gpus == "cpu" else len(gpus.split(",")))
        yield running


@pytest.fixture(scope="session")
def fleet(fleet_env, tmp_path_factory):
    """One CPU worker on queue ``relations``, for the whole session."""
    with started_fleet(fleet_env, ["relations"], tmp_path_factory.mktemp("logs"), name="rel") as running:
        yield running


@pytest.fixture(scope="session")
def editbench_fleet(fleet_env, tmp_path_factory):
    """One CPU worker on queues ``edit,score``, for the whole session."""
    with started_fleet(fleet_env, ["edit", "score"], tmp_path_factory.mktemp("logs"), name="eb") as running:
        yield running


@pytest.fixture
def redis_client(redis_server):
    client = connect(redis_server.url)
    client.flushall()
    return client


@pytest.fixture
def sample(tmp_path) -> tuple[Path, Path]:
    return write_relations_sample(tmp_path / "sample")


def wait_for_workers(broker_url: str, prefix: str, count: int, timeout: float = 60) -> None:
    """Wait until ``count`` workers whose node names start with ``prefix`` answer a ping."""
    app = celery_client(Settings(broker_url=broker_url))

    def answered() -> bool:
        replies = app.control.ping(timeout=0.5)  # also the interval between tries
        return sum(name.startswith(prefix) for reply in replies for name in reply) >= count

    wait_until(answered, timeout, f"{count} worker(s) named {prefix}* answering", interval=0)


def run_producer(*args: str, env: dict[str, str], timeout: float = 300, wait: bool = True,
                 preexec_fn=None) -> subprocess.CompletedProcess | subprocess.Popen:
    """``python -m producer ...`` as a user runs it, with the given EVALFLEET_* variables
    (``preexec_fn``: run in the child before the producer starts, e.g. to limit it)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EVALFLEET_")}
    full_env.update(env)
    cmd = [sys.executable, "-m", "producer", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, preexec_fn=preexec_fn)
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec_fn)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def embedded_url(work: Path, port: int) -> str:
    """The URL of a one-command run's Redis: its password is kept in its data directory."""
    return f"redis://:{(work / 'redis' / PASSWORD_FILE).read_text().strip()}@127.0.0.1:{port}/0"


def one_pair_benchmark(directory: Path) -> Path:
    """The editbench sample cut to its first pair: a run of one edit and one score."""
    benchmark = write_editbench_sample(directory)
    category, pairs = next(iter(read_json(benchmark).items()))
    benchmark.write_text(json.dumps({category: pairs[:1]}, ensure_ascii=False), encoding="utf-8")
    return benchmark


def run_store(client, run_id: str) -> RunStore:
    return RunStore(client, run_id)


# --- private Redis and fleets (fault and security tests) ----------------------------------------

@contextlib.contextmanager
def started_probe_worker(server_url: str, directory: Path, **env: str):
    """One worker (one child) running tests/probe_tasks.py on queue ``relations``, answering
    before we go on."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EVALFLEET_")}
    full_env.update({"EVALFLEET_BROKER_URL": server_url, **env,
                     "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])})
    with open(directory / "worker.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "probe_tasks", "worker", "-Q",
                                 "relations", "--concurrency", "1", "-n", "probe@%h"],
                                cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_workers(server_url, "probe@", 1)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def private_env(server: EmbeddedRedis, model_cache: Path, work_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of the processes of a test that owns its Redis (no other fleet consumes it)."""
    env = {**FAST, "EVALFLEET_BROKER_URL": server.url, "EVALFLEET_MODEL_CACHE": str(model_cache),
           "EVALFLEET_WORK_DIR": str(work_dir)}
    env.update(extra)
    return env


def command_line(process: psutil.Process) -> str:
    """A process's command line, "" once it has ended (a child listed a moment before may be
    gone by the time it is read: a short-lived helper of a starting worker)."""
    with contextlib.suppress(psutil.Error):
        return " ".join(process.cmdline())
    return ""


def worker_processes(launcher_pid: int) -> tuple[psutil.Process, list[psutil.Process]]:
    """(Celery main process, its prefork children) under a launcher."""
    [main] = psutil.Process(launcher_pid).children()
    return main, main.children()


# --- acting on a run at a chosen point: state held still, never a race --------------------------

STAGE_OF_TASK = {RELATIONS_TASK: RELATIONS_STAGE, EDIT_TASK: EDIT_STAGE, SCORE_TASK: SCORE_STAGE}


def message_args(message: dict | str | bytes) -> list:
    """A task message's arguments (``run_id, keys, ...``), as kombu keeps the message in Redis."""
    if not isinstance(message, dict):
        message = json.loads(message)
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, _kwargs, _embed = kombu_loads(body, message["content-type"], message["content-encoding"],
                                        accept=prepare_accept_content(["msgpack", "json"]))
    return list(args)


def message_keys(message: dict | str | bytes) -> list[str]:
    """The item keys a task message carries."""
    return list(message_args(message)[1])


@contextlib.contextmanager
def frozen(processes: list[psutil.Process]):
    """The processes stopped (SIGSTOP) for the block: what the test reads stays true while it acts."""
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.suspend()
    try:
        yield
    finally:
        for p in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.resume()


def task_mid_way(client) -> bool:
    """A task delivered to a worker (not acknowledged) whose items are not all done."""
    for message, _queue in unacked_messages(client):
        stage = STAGE_OF_TASK.get(message.get("headers", {}).get("task"))
        run_id, keys = message_args(message)[:2]
        if stage is not None and not all(RunStore(client, run_id).is_done(stage, keys)):
            return True
    return False


def kill_mid_task(fleet_pid: int, client, producer, target: str = "child") -> list[psutil.Process]:
    """SIGKILL the fleet's Celery main process (``target="main"``) or its pool child while a task
    is mid-way. The worker is frozen while that is read, so the kill lands where it was read.
    Returns the children a killed main process leaves (they may finish their task)."""
    orphans: list[psutil.Process] = []

    def killed() -> bool:
        assert producer.poll() is None, "the run ended before a task was caught mid-way"
        main, children = worker_processes(fleet_pid)
        with frozen([main, *children]):
            if not task_mid_way(client):
                return False
            (children[0] if target == "child" else main).kill()
        orphans.extend(children if target == "main" else [])
        return True

    wait_until(killed, 180, "a task caught mid-way")
    return orphans


class HeldQueue:
    """A queue of its own for one stage of a run, whose messages reach the workers only when the
    test lets them through: the run is then exactly as far as the test says.

    Give the run ``env`` (``EVALFLEET_QUEUE_<NAME>`` names this queue); no worker consumes it
    until ``release``, which hands the oldest messages to the workers answering on the broker
    (Celery's ``add_consumer``) and keeps the others aside; ``release_rest`` lets them follow.
    """

    def __init__(self, broker_url: str, setting: str, name: str):
        self.queue = name
        self.aside = f"{name}.aside"
        self.env = {f"EVALFLEET_QUEUE_{setting.upper()}": name}
        self.client = connect(broker_url)
        self.app = celery_client(Settings(broker_url=broker_url))
        self.consumed = False

    def waiting(self) -> list[list[str]]:
        """The item keys of each message waiting in the queue, oldest (the next taken) first."""
        return [message_keys(raw) for raw in reversed(self.client.lrange(self.queue, 0, -1))]

    def release(self, at_least: int) -> list[str]:
        """Let the oldest messages through until they carry ``at_least`` items; their keys.
        At least one message stays aside."""
        self.client.rename(self.queue, self.aside)
        keys: list[str] = []
        while len(keys) < at_least:
            assert self.client.llen(self.aside) > 1, f"fewer than {at_least} items leave none aside"
            keys += message_keys(self.client.lmove(self.aside, self.queue, "RIGHT", "LEFT"))
        self._consume()
        return keys

    def release_rest(self) -> None:
        while self.client.lmove(self.aside, self.queue, "RIGHT", "LEFT") is not None:
            pass
        self._consume()

    def _consume(self) -> None:
        if not self.consumed:
            replies = self.app.control.add_consumer(self.queue, reply=True)
            assert replies, f"no worker answered add_consumer({self.queue!r})"
            self.consumed = True

    def close(self) -> None:
        if self.consumed:
            self.app.control.cancel_consumer(self.queue, reply=True)


# --- figures: measured numbers, printed at the end of the run ------------------------------------

FIGURE_LINES: list[str] = []


def record_figures(title: str, **values: object) -> None:
    """Keep a line of measured figures; pytest prints them all in its terminal summary."""
    FIGURE_LINES.append(f"{title}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURE_LINES:
        terminalreporter.section("evalfleet figures")
        for line in FIGURE_LINES:
            terminalreporter.write_line(line)


def relations_counts(stage1: Path, input_path: Path, *, without_image: str | None = None
                     ) -> tuple[int, int, int]:
    """(pairs, images, descriptions) a relations run of these files has at top-K 10, from the
    inputs themselves; ``without_image`` leaves that image's pairs out."""
    pairs = [p for p in prepare_data_for_inference(stage1, input_path, 10).pairs
             if str(p["image_id"]) != without_image]
    return (len(pairs), len({str(p["image_id"]) for p in pairs}),
            sum(len(p["stage1_top_k"]) for p in pairs))


# --- tiny models and the tiny editor, built once per session -------------------------------------
# Built into the session's model cache, where the workers of the session's fleets find them, so a
# model is built once whoever needs it first. torch, transformers and diffusers are imported
# inside the fixtures: they take seconds to import, and many test files load no model.

@pytest.fixture(scope="session")
def tiny_vlm_dir(model_cache) -> Path:
    """The tiny dense Qwen3-VL (the relations model and the judge), as ``tiny`` resolves."""
    from workers.models import resolve_model_path
    return Path(resolve_model_path(TINY_MODEL, model_cache))


@pytest.fixture(scope="session")
def tiny_moe_dir(model_cache) -> Path:
    """The tiny Mixture-of-Experts Qwen3-VL (the architecture of Qwen3-VL-30B-A3B)."""
    from workers.models import build_tiny_qwen3_vl_moe
    return build_tiny_qwen3_vl_moe(model_cache / "tiny-qwen3-vl-moe")


@pytest.fixture(scope="module", params=["dense", "moe"])
def each_tiny_vlm_dir(request) -> Path:
    """The dense tiny Qwen3-VL, then the Mixture-of-Experts one: for what must hold for both.
    Module-scoped, so a file's tests run for one model and then for the other."""
    return request.getfixturevalue({"dense": "tiny_vlm_dir", "moe": "tiny_moe_dir"}[request.param])


@pytest.fixture(scope="session")
def tiny_editor_dir(model_cache) -> Path:
    """The tiny Qwen-Image-Edit pipeline, as ``tiny`` resolves for the editor."""
    from workers.models.loading import EDITOR, resolve_model_path
    return Path(resolve_model_path(TINY_MODEL, model_cache, kind=EDITOR))


@pytest.fixture(scope="session")
def tiny_editor_lora(tiny_editor_dir, model_cache) -> Path:
    """A LoRA of the tiny Qwen-Image-Edit's transformer; tests read it and never change it."""
    from workers.models.tiny import build_tiny_lora
    return build_tiny_lora(tiny_editor_dir, model_cache / "tiny-qwen-image-edit-lora")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def transformers_serve(tiny_vlm_dir, tmp_path_factory):
    """The base URL of `transformers serve` on the tiny Qwen3-VL, on the CPU, on a free port: the
    command users run. Its model is asked for by its directory's name (str(tiny_vlm_dir))."""
    with served(tiny_vlm_dir, tmp_path_factory.mktemp("serve") / "serve.log", wait_until) as url:
        yield url


@pytest.fixture(scope="module")
def vlm(tiny_vlm_dir):
    """(processor, model) of the tiny Qwen3-VL, float32 on the CPU, loaded once per test file."""
    import torch
    from workers.models import load_vlm
    return load_vlm(str(tiny_vlm_dir), revision="", dtype=torch.float32, device=torch.device("cpu"))


def load_tiny_editor(tiny_editor_dir: Path):
    """The tiny editor pipeline, float32 on the CPU."""
    import torch
    from workers.models.loading import load_image_edit_pipeline
    return load_image_edit_pipeline(str(tiny_editor_dir), revision="", dtype=torch.float32,
                                    device=torch.device("cpu"))


@pytest.fixture
def editor_pipeline(tiny_editor_dir):
    """A tiny editor pipeline of the test's own: the speed-ups, modes and compilation under test
    hook into its transformer."""
    return load_tiny_editor(tiny_editor_dir)


def count_builds(monkeypatch, builder: str) -> list[Path]:
    """Make ``resolve_model_path`` record each directory it builds with the named tiny builder."""
    import workers.models.loading as loading
    build = getattr(loading, builder)
    builds: list[Path] = []

    def counting_build(out_dir: Path, seed: int = 0) -> Path:
        builds.append(out_dir)
        return build(out_dir, seed)

    monkeypatch.setattr(loading, builder, counting_build)
    return builds


# --- a broker of a test's own --------------------------------------------------------------------

@pytest.fixture
def own_broker(tmp_path):
    """(server, Celery client) of a Redis no fleet consumes: the session's fleets would take the
    messages a test sends to their queues."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server, celery_client(Settings(broker_url=server.url))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS) with the bucket ``seaweedfs.BUCKET``; the tests
    that need it are skipped, saying why, where its binary cannot run."""
    from seaweedfs import started_seaweedfs, why_weed_cannot_run

    reason = why_weed_cannot_run()
    if reason:
        pytest.skip(reason)
    with started_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), wait_until) as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process reads the server's endpoint and the writer's credentials from the standard
    variables, as a producer or worker does."""
    import s3fs

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield s3_server.env()
    s3fs.S3FileSystem.clear_instance_cache()
