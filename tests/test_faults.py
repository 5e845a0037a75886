"""Fault injection with real processes: nothing is lost, nothing is duplicated, nothing is redone.

Each test owns its redis-server and its Celery workers (no other fleet consumes its
queues). Kill points are drawn from a fixed seed, so a failure can be replayed. The
``slow`` variants (``python -m pytest -m slow``) run 20 worker-kill trials; the default
suite runs a few of each kind.

The measured figures are printed in pytest's terminal summary ("evalfleet figures").
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from PIL import Image

from conftest import (FAST, ROOT, HeldQueue, command_line, embedded_url, frozen, kill_mid_task, private_env, read_json,
                      record_figures, run_producer, started_fleet, wait_until, worker_processes)
from producer.editbench.sample import write_editbench_sample
from producer.embedded import EmbeddedRedis, free_port
from producer.kombu_redis import unacked_messages
from producer.relations.sample import write_relations_sample
from shared.artifacts import sha256_bytes, write_once
from shared.editbench.data import prepare_benchmark
from shared.keys import relation_key
from shared.messages import EDIT_STAGE, RELATIONS_STAGE, SCORE_STAGE
from shared.relations.data import prepare_data_for_inference
from shared.store import RunStore, connect

SEED = 20261124
# Fleets whose main process is killed: its unacknowledged message comes back after this.
VISIBILITY_TIMEOUT = 5
ALL_QUEUES = ["relations", "edit", "score"]
# Long enough generations that a task is caught running at any point of the run.
# A prompt budget of 80 packs the sample's small images into shared tasks (4 tasks for 5
# images): a task killed mid-way carries several images, and the rerun must still redo nothing.
KILL_ENV = {"EVALFLEET_MAX_NEW_TOKENS": "24", "EVALFLEET_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            "EVALFLEET_TASK_PROMPTS": "80"}


@functools.cache
def sample_counts() -> tuple[int, int, int]:
    """(relations pairs, relations descriptions, editbench pairs) of the built-in samples."""
    with tempfile.TemporaryDirectory() as directory:
        inputs = write_inputs(Path(directory))
        pairs = prepare_data_for_inference(inputs["stage1"], inputs["input"], 10).pairs
        return (len(pairs), sum(len(p["stage1_top_k"]) for p in pairs),
                len(prepare_benchmark(inputs["benchmark"]).pairs))



# --- runs and their outcome ---------------------------------------------------------------------

@dataclass
class Outcome:
    items: int
    lost: int
    duplicated: int
    redone: int  # work completed more than once (worker-side counters): at-least-once, allowed


def start_run(job: str, env: dict, inputs: dict, run_id: str, output: Path, wait: bool = False):
    if job == "relations":
        args = ("--stage1", str(inputs["stage1"]), "--input", str(inputs["input"]))
    else:
        args = ("--benchmark", str(inputs["benchmark"]))
    return run_producer("run", job, *args, "--run", run_id, "--output", str(output), env=env, wait=wait)


def write_inputs(directory: Path) -> dict:
    stage1, input_path = write_relations_sample(directory / "relations")
    return {"stage1": stage1, "input": input_path,
            "benchmark": write_editbench_sample(directory / "editbench")}


RELATIONS_PAIRS, RELATIONS_DESCRIPTIONS, EDITBENCH_PAIRS = sample_counts()


def relations_outcome(output: Path, store: RunStore, inputs: dict) -> Outcome:
    report = read_json(output)
    expected = {relation_key(p["image_id"], p["subject"], p["object"])
                for p in prepare_data_for_inference(inputs["stage1"], inputs["input"], 10).pairs}
    keys = [relation_key(r["image_id"], r["subject"], r["object"]) for r in report["results"]]
    for result in report["results"]:  # no half-written result
        assert len(result["stage2_generated"]) == len(result["stage1_top_k"])
    assert report["failed"] == []
    generated = store.stats(RELATIONS_STAGE)["descriptions_generated"]
    return Outcome(items=len(expected), lost=len(expected - set(keys)),
                   duplicated=len(keys) - len(set(keys)), redone=generated - RELATIONS_DESCRIPTIONS)


def editbench_outcome(output: Path, store: RunStore) -> Outcome:
    report = read_json(output)
    assert report["failures"] == []
    keys = [f"{name}|{r['pair_id']}" for name, cat in report["categories"].items() for r in cat["results"]]
    edits = store.done(EDIT_STAGE)
    for key in keys:  # the edited file on disk is the one that was scored
        data = Path(edits[key]["edited_path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == edits[key]["edited_digest"], key
    stats = store.stats(EDIT_STAGE), store.stats(SCORE_STAGE)
    executed = stats[0]["edits_executed"] + stats[1]["scores_executed"]
    return Outcome(items=EDITBENCH_PAIRS, lost=EDITBENCH_PAIRS - len(set(keys)),
                   duplicated=len(keys) - len(set(keys)), redone=executed - 2 * EDITBENCH_PAIRS)


def outcome(job: str, output: Path, store: RunStore, inputs: dict) -> Outcome:
    return relations_outcome(output, store, inputs) if job == "relations" else editbench_outcome(output, store)


def progress_units(job: str, store: RunStore) -> tuple[int, int]:
    """(units done, units in all): pairs for relations; edits then scores for editbench."""
    if job == "relations":
        return store.progress(RELATIONS_STAGE).done, RELATIONS_PAIRS
    return (store.progress(EDIT_STAGE).done + store.progress(SCORE_STAGE).done, 2 * EDITBENCH_PAIRS)


# --- killing workers -------------------------------------------------------------------------------

@dataclass
class Trial:
    job: str
    target: str  # "child" or "main"
    point: str  # every kill lands inside a running task (kill_mid_task)
    outcome: Outcome
    seconds: float


def wait_for_kill_point(job: str, store: RunStore, rng: random.Random, producer) -> str:
    """A random point of the run: a random number of its units done, then a random fraction of a
    second more. The kill itself waits for a task mid-way from there (``kill_mid_task``)."""
    target = rng.randrange(0, 2 * EDITBENCH_PAIRS if job == "editbench" else RELATIONS_PAIRS)
    extra = rng.uniform(0, 0.3)

    def reached() -> bool:
        assert producer.poll() is None, "the run ended before the kill point"
        return store.exists() and progress_units(job, store)[0] >= target

    wait_until(reached, 180, f"{job}: {target} units done")
    time.sleep(extra)  # a random point of the run, not a synchronisation
    return f"{target}+{extra:.2f}s"


def wait_past_visibility_timeout(client, timeout: float) -> None:
    """Until every unacknowledged message is older than the visibility timeout."""
    delivered = [score for _, score in client.zrange("unacked_index", 0, -1, withscores=True)]
    if delivered:
        time.sleep(max(0.0, max(delivered) + timeout + 0.5 - time.time()))


def kill_trial(n: int, job: str, target: str, rng: random.Random, base: Path, model_cache: Path) -> Trial:
    """One run of ``job``; its worker's ``target`` process SIGKILLed at a random point."""
    directory = base / f"trial{n}-{job}-{target}"
    inputs = write_inputs(directory)
    started = time.monotonic()
    orphans: list[psutil.Process] = []
    with EmbeddedRedis(directory / "redis") as server, contextlib.ExitStack() as stack:
        env = private_env(server, model_cache, directory / "work", **KILL_ENV)
        fleet = stack.enter_context(started_fleet(env, ALL_QUEUES, directory, name=f"t{n}"))
        client = connect(server.url)
        store = RunStore(client, f"trial{n}")
        output = directory / "report.json"
        producer = start_run(job, env, inputs, store.run_id, output)
        try:
            point = wait_for_kill_point(job, store, rng, producer)
            # A killed main process's children may finish their task; they get nothing after it.
            orphans = kill_mid_task(fleet.proc.pid, client, producer, target)
            if target == "main":
                wait_past_visibility_timeout(client, VISIBILITY_TIMEOUT)
                # A new worker's first sweep hands it the dead worker's message.
                stack.enter_context(started_fleet(env, ALL_QUEUES, directory, name=f"t{n}r"))
            out, _ = producer.communicate(timeout=300)
        finally:
            if producer.poll() is None:
                producer.kill()
            for orphan in orphans:
                with contextlib.suppress(psutil.NoSuchProcess):
                    orphan.kill()
        assert producer.returncode == 0, out
        result = outcome(job, output, store, inputs)
    return Trial(job, target, point, result, time.monotonic() - started)


def run_kill_trials(plan: list[tuple[str, str]], base: Path, model_cache: Path, title: str) -> list[Trial]:
    rng = random.Random(SEED)
    trials = []
    for n, (job, target) in enumerate(plan):
        trial = kill_trial(n, job, target, rng, base, model_cache)
        trials.append(trial)
        record_figures(f"{title} trial {n}", job=job, killed=target, point=trial.point,
                items=trial.outcome.items, lost=trial.outcome.lost, duplicated=trial.outcome.duplicated,
                redone=trial.outcome.redone, seconds=round(trial.seconds, 1))
    record_figures(title, trials=len(trials),
            items=sum(t.outcome.items for t in trials), lost=sum(t.outcome.lost for t in trials),
            duplicated=sum(t.outcome.duplicated for t in trials),
            redone=sum(t.outcome.redone for t in trials),
            seconds=round(sum(t.seconds for t in trials), 1))
    assert sum(t.outcome.lost for t in trials) == 0
    assert sum(t.outcome.duplicated for t in trials) == 0
    assert sum(t.outcome.redone for t in trials) == 0
    return trials


FAST_PLAN = [("relations", "main"), ("editbench", "child")]
SLOW_PLAN = [(job, target) for _ in range(5) for job in ("relations", "editbench")
             for target in ("child", "main")]


def test_worker_killed_loses_and_duplicates_nothing(model_cache, tmp_path):
    run_kill_trials(FAST_PLAN, tmp_path, model_cache, "worker-kill (fast)")


@pytest.mark.slow
def test_worker_killed_20_trials_lose_and_duplicate_nothing(model_cache, tmp_path):
    assert len(SLOW_PLAN) == 20
    run_kill_trials(SLOW_PLAN, tmp_path, model_cache, "worker-kill (slow)")


# --- Redis restarted mid-run ---------------------------------------------------------------------------

@pytest.mark.parametrize("job", ["relations", "editbench"])
def test_redis_restarted_mid_run_loses_nothing(job, model_cache, tmp_path):
    inputs = write_inputs(tmp_path)
    # A fixed port and data directory: the restarted server is the same Redis to everyone.
    server = EmbeddedRedis(tmp_path / "redis", port=free_port())
    server.start()
    try:
        # A task running when Redis goes is cancelled (worker_cancel_long_running_tasks_on_
        # connection_loss) and its message stays unacknowledged: the stall sends its items again.
        env = private_env(server, model_cache, tmp_path / "work", EVALFLEET_MAX_NEW_TOKENS="24",
                          EVALFLEET_STALL_SECONDS="5")
        with started_fleet(env, ALL_QUEUES, tmp_path, name="rr") as fleet:
            store = RunStore(connect(server.url), "restart")
            output = tmp_path / "report.json"
            producer = start_run(job, env, inputs, store.run_id, output)

            def stopped_mid_run() -> int | None:
                """Redis stopped while the worker is held still inside the run: units done then."""
                assert producer.poll() is None, "the run ended before Redis could be stopped"
                main, children = worker_processes(fleet.proc.pid)
                with frozen([main, *children]):
                    done, total = progress_units(job, store) if store.exists() else (0, 1)
                    if not 3 <= done < total:
                        return None
                    server.stop()
                    return done

            before = wait_until(stopped_mid_run, 180, "3 units done, not all")
            time.sleep(1)  # gone for a moment, not a synchronisation: the outcome holds either way
            server.start()
            # Append-only file: what was done before the restart is still done.
            assert progress_units(job, store)[0] >= before
            out, _ = producer.communicate(timeout=300)
            assert producer.returncode == 0, out
            result = outcome(job, output, store, inputs)
    finally:
        server.stop()
    record_figures(f"redis-restart {job}", items=result.items, lost=result.lost, duplicated=result.duplicated,
            redone=result.redone)
    assert (result.lost, result.duplicated) == (0, 0)


# --- the producer / phase controller interrupted --------------------------------------------------------

@pytest.fixture(scope="module")
def interrupt_fleet(model_cache, tmp_path_factory):
    """A Redis and one worker of their own, for the interrupted-producer tests."""
    directory = tmp_path_factory.mktemp("interrupt")
    with EmbeddedRedis(directory / "redis") as server:
        env = private_env(server, model_cache, directory / "work", EVALFLEET_MAX_NEW_TOKENS="24")
        with started_fleet(env, ALL_QUEUES, directory, name="int"):
            yield server, env


INTERRUPTS = [("relations", "wait", signal.SIGINT), ("relations", "wait", signal.SIGKILL),
              ("editbench", "edit", signal.SIGINT), ("editbench", "edit", signal.SIGKILL),
              ("editbench", "score", signal.SIGINT), ("editbench", "score", signal.SIGKILL)]
# The default suite keeps one case per phase; the slow one runs every signal in every phase.
FAST_INTERRUPTS = {("relations", "wait", signal.SIGKILL), ("editbench", "edit", signal.SIGKILL),
                   ("editbench", "score", signal.SIGINT)}


def interrupt_cases():
    for job, phase, sig in INTERRUPTS:
        marks = () if (job, phase, sig) in FAST_INTERRUPTS else (pytest.mark.slow,)
        yield pytest.param(job, phase, sig, marks=marks, id=f"{job}-{phase}-{sig.name}")


# Each phase's stage, and the setting naming its queue.
PHASES = {"wait": (RELATIONS_STAGE, "relations"), "edit": (EDIT_STAGE, "edit"), "score": (SCORE_STAGE, "score")}


@pytest.mark.parametrize("job, phase, sig", list(interrupt_cases()))
def test_producer_interrupted_rerun_redoes_nothing(interrupt_fleet, tmp_path, job, phase, sig):
    server, env = interrupt_fleet
    inputs = write_inputs(tmp_path)
    run_id = f"int-{job}-{phase}-{sig.name}"
    store = RunStore(connect(server.url), run_id)
    output = tmp_path / "report.json"
    stage, setting = PHASES[phase]
    # The phase's tasks wait in a queue of their own: the signal lands inside the phase, some of
    # its items done and not all, however fast the workers are. No stall resend meanwhile.
    held = HeldQueue(server.url, setting, f"{setting}-held-{run_id}")
    producer = start_run(job, {**env, **held.env, "EVALFLEET_STALL_SECONDS": "3600"}, inputs, run_id, output)
    try:
        def every_task_sent() -> bool:
            assert producer.poll() is None, "the run ended before the phase"
            left = store.unfinished(stage) if store.exists() else []
            return bool(left) and sorted(k for keys in held.waiting() for k in keys) == sorted(left)

        wait_until(every_task_sent, 180, f"every {stage} task sent")
        released = held.release(at_least=3)
        wait_until(lambda: all(store.is_done(stage, released)), 180, f"{len(released)} {stage} items done")
        assert producer.poll() is None
        producer.send_signal(sig)
        out, _ = producer.communicate(timeout=120)
        assert producer.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), out

        # The interrupted run's messages reach the workers after all, as they would have.
        held.release_rest()
        rerun = start_run(job, env, inputs, run_id, output, wait=True)
    finally:
        if producer.poll() is None:
            producer.kill()
        held.close()
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    result = outcome(job, output, store, inputs)
    record_figures(f"interrupt {job} {phase} {sig.name}", items=result.items, lost=result.lost,
            duplicated=result.duplicated, redone=result.redone)
    # Counted worker-side: one execution per item, the interruption included.
    assert (result.lost, result.duplicated, result.redone) == (0, 0, 0)


def test_one_command_mode_children_die_with_a_killed_producer(model_cache, tmp_path):
    """SIGKILL the producer: its embedded Redis and local workers must not live on as orphans."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from producer.embedded import EmbeddedRedis, LocalFleet\n"
        "d = Path(sys.argv[1])\n"
        "with EmbeddedRedis(d / 'redis') as server:\n"
        "    env = {'EVALFLEET_BROKER_URL': server.url, 'EVALFLEET_MODEL_CACHE': sys.argv[2]}\n"
        "    with LocalFleet(env, ['relations'], d / 'workers.log', gpus='cpu', name_prefix='orph-'):\n"
        "        print('ready', flush=True)\n"
        "        time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(model_cache)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    descendants: list[psutil.Process] = []
    try:
        assert proc.stdout.readline().strip() == "ready"
        wait_until(lambda: len(psutil.Process(proc.pid).children(recursive=True)) >= 4, 60,
                   "redis-server, launcher, worker and its child")
        descendants = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _, alive = psutil.wait_procs(descendants, timeout=30)
        assert alive == [], f"orphans left: {[p.pid for p in alive]}"
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_all(descendants)
    # The next start on the same data directory finds the old server gone.
    with EmbeddedRedis(tmp_path / "redis"):
        pass


def test_one_command_mode_workers_die_at_once_with_a_killed_producer_mid_task(model_cache, tmp_path):
    """A task is running (a long generation) when the producer is SIGKILLed: the workers
    must not finish it first (a warm shutdown did, or waited forever on a blocked task)."""
    env = {**FAST, "EVALFLEET_WORK_DIR": str(tmp_path / "work"), "EVALFLEET_MODEL_CACHE": str(model_cache),
           "EVALFLEET_MAX_NEW_TOKENS": "4000", "OMP_NUM_THREADS": "1"}
    producer = run_producer("run", "relations", "--run", "killed", env=env, wait=False)
    descendants: list[psutil.Process] = []
    try:
        port = wait_for_embedded_redis(producer)
        store = RunStore(connect(embedded_url(tmp_path / "work", port)), "killed")
        wait_until(lambda: store.client.hlen("unacked") > 0, 120, "a task delivered")
        # The worker heartbeat is written once the model is resident: the task is generating.
        wait_until(lambda: store.client.hlen("evalfleet:workers") > 0, 120, "the model loaded")
        descendants = psutil.Process(producer.pid).children(recursive=True)
        producer.send_signal(signal.SIGKILL)
        producer.wait()
        started = time.monotonic()
        _, alive = psutil.wait_procs(descendants, timeout=20)
        seconds = time.monotonic() - started
        assert alive == [], f"still running: {[command_line(p) for p in alive]}"
    finally:
        if producer.poll() is None:
            producer.kill()
        kill_all(descendants)
    record_figures("one-command kill mid-task", seconds_until_all_gone=round(seconds, 1))
    assert seconds < 10


def test_two_runs_started_at_once_never_share_a_redis_data_directory(tmp_path):
    """Each start holds the data directory's lock for its run: the second waits for the first."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from producer.embedded import EmbeddedRedis\n"
        "with EmbeddedRedis(Path(sys.argv[1])):\n"
        "    print('start', time.time(), flush=True)\n"
        "    time.sleep(1)\n"
        "    print('stop', time.time(), flush=True)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "redis")], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    spans = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        times = dict(line.split() for line in out.splitlines())
        spans.append((float(times["start"]), float(times["stop"])))
    (a_start, a_stop), (b_start, b_stop) = sorted(spans)
    assert a_stop <= b_start, "two redis-servers ran on one data directory at once"


def kill_all(processes: list[psutil.Process]) -> None:
    """SIGKILL these processes (started by this test) if they still run."""
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


@pytest.mark.slow
def test_one_command_mode_killed_then_rerun_redoes_nothing(model_cache, tmp_path):
    env = {**FAST, "EVALFLEET_WORK_DIR": str(tmp_path / "work"), "EVALFLEET_MODEL_CACHE": str(model_cache),
           "EVALFLEET_MAX_NEW_TOKENS": "24"}
    producer = run_producer("run", "relations", "--run", "onecmd", env=env, wait=False)
    port = wait_for_embedded_redis(producer)
    store = RunStore(connect(embedded_url(tmp_path / "work", port)), "onecmd")
    descendants: list[psutil.Process] = []

    def killed_mid_run() -> bool:
        """The producer killed while its workers are held still inside the run."""
        assert producer.poll() is None, "the run ended before the producer could be killed"
        descendants[:] = psutil.Process(producer.pid).children(recursive=True)
        with frozen([p for p in descendants if "redis-server" not in command_line(p)]):
            progress = store.progress(RELATIONS_STAGE) if store.exists() else None
            if progress is None or not 3 <= progress.done < progress.total:
                return False
            producer.send_signal(signal.SIGKILL)
            producer.wait()
            return True

    wait_until(killed_mid_run, 180, "3 pairs done, not all")
    try:
        # A task cut off from Redis waits up to 60 s for it (shared.store.connect), then the worker exits.
        _, alive = psutil.wait_procs(descendants, timeout=90)
        assert alive == []
    finally:
        kill_all(descendants)
    rerun = run_producer("run", "relations", "--run", "onecmd", env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    with EmbeddedRedis(tmp_path / "work" / "redis") as server:
        stats = RunStore(connect(server.url), "onecmd").stats(RELATIONS_STAGE)
        done = RunStore(connect(server.url), "onecmd").progress(RELATIONS_STAGE)
    record_figures("one-command kill", items=done.total, done=done.done,
            redone=stats["descriptions_generated"] - RELATIONS_DESCRIPTIONS)
    assert done.done == RELATIONS_PAIRS
    # The task cut off by the kill never stored anything; whatever finished was not redone.
    assert stats["descriptions_generated"] == RELATIONS_DESCRIPTIONS


def wait_for_embedded_redis(producer) -> int:
    def server() -> psutil.Process | None:
        for p in psutil.Process(producer.pid).children():
            if "redis-server" in command_line(p):
                return p
        return None

    wait_until(lambda: server() is not None and server().net_connections(kind="tcp"), 60, "embedded Redis")
    [listen] = [c for c in server().net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    return listen.laddr.port


# --- a poison item ---------------------------------------------------------------------------------------

def test_poison_item_fails_at_once_and_the_run_completes(model_cache, tmp_path):
    """An image the Qwen3-VL processor refuses (aspect ratio 4000:1): a bad input, not retried
    (one attempt, and no retry in the worker log), and it fails alone though it shares a task
    with every other image of the sample.

    Retries with back-off, for transient errors only: tests/test_task_failures.py.
    """
    stage1, input_path = write_relations_sample(tmp_path / "sample")
    Image.new("RGB", (4000, 1), "red").save(tmp_path / "sample" / "images" / "strip.png")
    images = json.loads(input_path.read_text())
    images.append({"image_id": 99, "image_path": "images/strip.png",
                   "objects": [{"id": 1, "class_name": "left", "bbox": [0, 0, 100, 1]},
                               {"id": 2, "class_name": "right", "bbox": [100, 0, 200, 1]}]})
    input_path.write_text(json.dumps(images))
    data = json.loads(stage1.read_text())
    data["per_image_top100_candidates"]["99"] = [
        {"subject": "left", "object": "right", "predicted_predicate": "next to", "similarity": 0.9}]
    stage1.write_text(json.dumps(data))
    output = tmp_path / "out.json"
    with EmbeddedRedis(tmp_path / "redis") as server:
        env = private_env(server, model_cache, tmp_path / "work", EVALFLEET_RETRY_BACKOFF_SECONDS="30",
                          EVALFLEET_TASK_MAX_RETRIES="3", EVALFLEET_TASK_PROMPTS="1024")
        with started_fleet(env, ["relations"], tmp_path, name="poison"):
            started = time.monotonic()
            proc = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                                "--output", str(output), env=env)
            seconds = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = read_json(output)
    [failure] = report["failed"]
    assert failure["key"] == "99|left|right" and failure["attempts"] == 1
    assert "aspect ratio" in failure["reason"]
    assert report["summary"]["total_pairs"] == len(prepare_data_for_inference(stage1, input_path, 10).pairs) - 1
    # A retry is logged when it is scheduled ("retry N"): nothing was.
    assert not re.search(r"retry \d", (tmp_path / "workers.log").read_text())
    record_figures("poison", attempts=failure["attempts"], run_seconds=round(seconds, 1))


# --- a task longer than the visibility timeout ---------------------------------------------------------------

def test_task_longer_than_visibility_timeout_runs_twice_and_stores_once(model_cache, tmp_path):
    """Redis hands the message of a running task to a second worker; the idempotent keys hold."""
    stage1, input_path = write_relations_sample(tmp_path / "sample")
    data = json.loads(stage1.read_text())
    cands = data["per_image_top100_candidates"]
    data["per_image_top100_candidates"] = {"2343729": cands["2343729"]}  # one image: one task
    stage1.write_text(json.dumps(data))
    expected = {relation_key(p["image_id"], p["subject"], p["object"]): len(p["stage1_top_k"])
                for p in prepare_data_for_inference(stage1, input_path, 10).pairs}
    output = tmp_path / "out.json"
    with EmbeddedRedis(tmp_path / "redis") as server:
        # A visibility timeout of 2 s against a task of ~10 s or more. One thread per worker:
        # two workers share the CPU without oversubscribing it.
        env = private_env(server, model_cache, tmp_path / "work", EVALFLEET_VISIBILITY_TIMEOUT="2",
                          EVALFLEET_MAX_NEW_TOKENS="2000", OMP_NUM_THREADS="1")
        client = connect(server.url)
        store = RunStore(client, "long")
        with started_fleet(env, ["relations"], tmp_path, name="first") as first, \
                contextlib.ExitStack() as second:
            producer = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                                    "--run", "long", "--output", str(output), env=env, wait=False)
            wait_until(lambda: client.hlen("unacked") == 1, 60, "the task delivered")
            # The worker heartbeat is written once the model is resident: the task is generating.
            wait_until(lambda: client.hlen("evalfleet:workers") > 0, 120, "the model loaded")
            # The first worker is held still until the second has the message: whatever the
            # machine's speed, the second execution begins before the first stored anything.
            main, children = worker_processes(first.proc.pid)
            with frozen([main, *children]):
                assert store.progress(RELATIONS_STAGE).done == 0
                wait_past_visibility_timeout(client, 2)
                # A second worker's first sweep finds the message overdue and takes it.
                second.enter_context(started_fleet(env, ["relations"], tmp_path, name="second"))
                wait_until(lambda: any(m["headers"].get("redelivered") for m, _ in unacked_messages(client)), 120,
                           "the second worker took the message")
            out, _ = producer.communicate(timeout=300)
            assert producer.returncode == 0, out
            wait_until(lambda: store.stats(RELATIONS_STAGE).get("tasks_generated", 0) >= 2, 120,
                       "the second execution")
        stats = store.stats(RELATIONS_STAGE)
    report = read_json(output)
    keys = [relation_key(r["image_id"], r["subject"], r["object"]) for r in report["results"]]
    record_figures("visibility-timeout", executions=stats["tasks_generated"], items=len(expected),
            stored=len(keys), descriptions_generated=stats["descriptions_generated"])
    # Both executions generated everything (the second began before the first stored anything)...
    assert stats["tasks_generated"] == 2
    assert stats["descriptions_generated"] == 2 * sum(expected.values())
    # ...and each pair has one result, whole, from one execution.
    assert sorted(keys) == sorted(expected) and report["failed"] == []
    for result in report["results"]:
        assert len(result["stage2_generated"]) == expected[relation_key(result["image_id"], result["subject"],
                                                                        result["object"])]


def test_an_edit_written_twice_keeps_the_first_file_and_its_digest(tmp_path):
    # A redelivered edit task may make different bytes on a GPU; the file the store names must not change.
    path = tmp_path / "edited" / "cat" / "pair.png"
    first = write_once(path, b"first execution")
    second = write_once(path, b"second execution, other bytes")
    assert path.read_bytes() == b"first execution"
    assert first == second == sha256_bytes(b"first execution")
    assert [p.name for p in path.parent.iterdir()] == ["pair.png"]  # no temporary files left
