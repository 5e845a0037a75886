"""A full disk is a fault like any other: named on the terminal, nothing half-written, the
workers stay up, and the same command after freeing space finishes the run.

A file-size limit stands in for a full disk. RLIMIT_FSIZE, set with prlimit(2) on processes
of one's own (no root, no mount), makes every write past it fail with EFBIG as a full disk
fails it with ENOSPC: Python ignores SIGXFSZ, and so does the embedded redis-server, which
inherits that. A tmpfs or a loop device would need mount rights (CAP_SYS_ADMIN), which a CI
container usually lacks even as root. Each test sets the limit once the run reached a state it
waits for, and "frees space" by lifting it (or by running the command again without it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import resource
from pathlib import Path

import psutil
import pytest

from conftest import FAST, command_line, embedded_url, frozen, read_json, run_producer, wait_until
from producer.editbench.sample import write_editbench_sample
from shared.artifacts import write_atomic, write_once
from shared.disk import DiskFull
from shared.jsonio import write_json_atomic
from shared.messages import EDIT_STAGE, RELATIONS_STAGE
from shared.store import RunStore, connect

FIRST_STAGE = {"relations": RELATIONS_STAGE, "editbench": EDIT_STAGE}
NO_LOGGING_ERRORS = ("--- Logging error ---", "Traceback")


def fill(pid: int) -> None:
    """Writes of process ``pid`` find no space from now on (its soft file-size limit is 0)."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, hard))


def full_from_the_start() -> None:
    """A preexec_fn: the child finds no space for any write from its start."""
    fill(0)


@contextlib.contextmanager
def no_space_here():
    """This process finds no space while inside (pytest writes nothing meanwhile)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def embedded_store(producer, work_dir: str, run_id: str) -> RunStore:
    """The run's store in the one-command producer's own redis-server."""
    def port() -> int | None:
        for child in psutil.Process(producer.pid).children():
            with contextlib.suppress(psutil.Error):
                if "redis-server" in " ".join(child.cmdline()):
                    return next((c.laddr.port for c in child.net_connections(kind="tcp")
                                 if c.status == psutil.CONN_LISTEN), None)
        return None
    return RunStore(connect(embedded_url(Path(work_dir), wait_until(port, 60, "embedded Redis"))), run_id)


def run_args(job: str, tmp_path) -> list[str]:
    """The sample (for editbench, 4 of its pairs: 2 edited before the disk fills, 2 after)."""
    if job == "relations":
        return ["run", job, "--run", "full"]
    benchmark = tmp_path / "bench" / "editbench_sample.json"
    if not benchmark.exists():
        categories = json.loads(write_editbench_sample(benchmark.parent).read_text(encoding="utf-8"))
        cut = {name: pairs[:2] for name, pairs in list(categories.items())[:2]}
        benchmark.write_text(json.dumps(cut, ensure_ascii=False), encoding="utf-8")
    return ["run", job, "--run", "full", "--benchmark", str(benchmark)]


def start_run(job: str, env: dict[str, str], tmp_path, fill_also: tuple[str, ...] = ()):
    """The run started; once 2 items are done and not all, its workers' disk fills (and that of
    the ``fill_also`` processes: "producer", "redis"), decided and done while the workers are
    held still, so the fill lands mid-run however fast the tiny models are."""
    producer = run_producer(*run_args(job, tmp_path), env=env, wait=False)
    store = embedded_store(producer, env["EVALFLEET_WORK_DIR"], "full")
    stage = FIRST_STAGE[job]

    def filled_mid_run() -> bool:
        workers = worker_processes(producer)
        with frozen(workers):
            progress = store.progress(stage) if store.exists() else None
            if progress is None or not 2 <= progress.done < progress.total:
                assert producer.poll() is None, "the run ended before the disk could fill"
                return False
            for process in [*workers, *others(producer, fill_also)]:
                fill(process.pid)
            return True

    wait_until(filled_mid_run, 240, "2 items done, not all")
    return producer


def others(producer, names: tuple[str, ...]) -> list[psutil.Process]:
    """The producer and its redis-server, as ``names`` asks."""
    chosen = [psutil.Process(producer.pid)] if "producer" in names else []
    if "redis" in names:
        chosen += [p for p in psutil.Process(producer.pid).children(recursive=True)
                   if "redis-server" in command_line(p)]
    return chosen


def worker_processes(producer) -> list[psutil.Process]:
    """The producer's descendants but its redis-server (and any that already ended)."""
    return [p for p in psutil.Process(producer.pid).children(recursive=True)
            if (command := command_line(p)) and "redis-server" not in command]


@pytest.fixture
def env(model_cache, tiny_vlm_dir, tiny_editor_dir, tmp_path) -> dict[str, str]:
    """One-command mode; the tiny models are built before any disk fills (a build writes)."""
    return {**FAST, "EVALFLEET_WORK_DIR": str(tmp_path / "work"), "EVALFLEET_MODEL_CACHE": str(model_cache)}


# --- mid-run ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("job", ["relations", "editbench"])
def test_a_disk_filled_mid_run_stops_it_naming_redis_disk_and_the_same_command_finishes_it(job, env, tmp_path):
    """The work directory's disk fills under Redis, the workers and the producer: Redis refuses
    writes (MISCONF), which no item can get past. The producer says so (exit 3), with no logging
    tracebacks; the workers, which meet the refusal too, do not exit first ("local workers
    exited" would be said instead)."""
    producer = start_run(job, env, tmp_path, fill_also=("producer", "redis"))
    output, _ = producer.communicate(timeout=240)
    assert producer.returncode == 3, output
    redis_dir = tmp_path / "work" / "redis"
    assert f"no space left on Redis's data directory {redis_dir.resolve()}" in output
    assert "run the same command again" in output
    assert not any(text in output for text in NO_LOGGING_ERRORS), output
    if job == "editbench":
        return  # its rerun after a full disk is the next test's (an editbench run is slow here)
    rerun = run_producer(*run_args(job, tmp_path), env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr


@pytest.mark.parametrize("job", ["relations", "editbench"])
def test_workers_on_a_full_disk_fail_only_what_they_must_write_and_go_on(job, env, tmp_path):
    """Only the workers' disk fills (their log; for editbench also the edited images). Relations
    workers write nothing else: the run finishes. Editbench edits after the fill fail, each naming
    the folder it could not write, and the worker goes on to score the others; the same command
    then finishes the run. A report written to a full disk exits 3 and leaves nothing behind."""
    producer = start_run(job, env, tmp_path)
    output, _ = producer.communicate(timeout=240)
    if job == "relations":
        assert producer.returncode == 0, output
        return
    assert producer.returncode == 1, output
    report = read_json(tmp_path / "work" / "full" / "editbench_report.json")
    edited_root = (tmp_path / "work" / "artifacts" / "full" / "edited").resolve()
    assert report["failures"] and report["overall"]["n"] >= 2
    for failure in report["failures"]:
        assert failure["stage"] == EDIT_STAGE
        assert failure["reason"].startswith(f"no space left on {edited_root}/"), failure

    rerun = run_producer(*run_args(job, tmp_path), env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr

    out_dir = tmp_path / "reports"
    out_dir.mkdir()
    report = run_producer("report", "editbench", "--run", "full", "--output", str(out_dir / "r.json"),
                          env=env, preexec_fn=full_from_the_start)
    output = report.stdout + report.stderr
    assert report.returncode == 3, output
    # The first write that fails names its disk: the work directory's (the running-Redis lock
    # notes its port) or the output's; the report writer's own is the unit test's below.
    assert any(f"no space left on {where}" in output
               for where in (out_dir.resolve(), f"the disk of {(tmp_path / 'work').resolve()}")), output
    assert not any(text in output for text in NO_LOGGING_ERRORS), output
    assert list(out_dir.iterdir()) == []  # neither a report nor a chart, whole or partial or temporary


# --- at the start ----------------------------------------------------------------------------------

def test_a_run_is_refused_below_the_minimum_free_space(tmp_path):
    work = tmp_path / "work"
    env = {**FAST, "EVALFLEET_WORK_DIR": str(work), "EVALFLEET_MIN_FREE_MB": str(10**8)}
    proc = run_producer("run", "relations", env=env)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"no space left on {work.resolve()}" in proc.stderr
    assert "below EVALFLEET_MIN_FREE_MB=1e+08" in proc.stderr
    assert not (work / "redis").exists()  # nothing registered


@pytest.mark.parametrize("job", ["relations", "editbench"])
def test_a_disk_full_at_the_start_exits_3_naming_it_with_nothing_half_written(job, tmp_path):
    """Free space above the minimum, yet no write succeeds: the sample cannot be written. One
    sentence, no logging tracebacks, no empty sample file for the next run to read."""
    work = tmp_path / "work"
    proc = run_producer("run", job, env={**FAST, "EVALFLEET_WORK_DIR": str(work)},
                        preexec_fn=full_from_the_start)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 3, output
    assert f"no space left on {(work / 'sample').resolve()}" in output
    assert f"cannot write the log {(work / 'logs' / 'producer.log').resolve()}" in output
    assert not any(text in output for text in NO_LOGGING_ERRORS), output
    assert [p for p in (work / "sample").rglob("*") if p.is_file()] == []


# --- the writers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("write", [
    lambda path: write_atomic(path, b"x" * 4096),
    lambda path: write_once(path, b"x" * 4096),
    lambda path: write_json_atomic(path, {"x": "y" * 4096}),
], ids=["write_atomic", "write_once", "write_json_atomic"])
def test_a_write_to_a_full_disk_names_the_folder_and_leaves_no_file(write, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    with no_space_here(), pytest.raises(DiskFull) as raised:
        write(folder / "file.png")
    assert raised.value.errno == errno.ENOSPC
    assert str(raised.value).startswith(f"no space left on {folder} (File too large)")
    assert list(folder.iterdir()) == []
    write(folder / "file.png")  # space freed: it is written
    assert [p.name for p in folder.iterdir()] == ["file.png"]


def test_a_worker_reports_a_full_disk_as_the_folder_to_free(tmp_path):
    from workers.tasks.base import failure_message
    assert failure_message(OSError(errno.ENOSPC, "No space left on device")) == (
        "no space left on the worker's disk (No space left on device): free space there and run "
        "the same command again")
    assert failure_message(DiskFull(tmp_path)).startswith(f"no space left on {tmp_path}: ")


def test_min_free_space_is_a_setting_with_a_range():
    from config import SettingsError, load_settings
    assert load_settings({}).min_free_mb == 100
    with pytest.raises(SettingsError, match="MIN_FREE_MB"):
        load_settings({"EVALFLEET_MIN_FREE_MB": "-1"})
