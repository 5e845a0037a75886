"""Watching a one-command run from another terminal: `status` and `report` in the same work
directory read the run's own Redis (found from the work directory, with its password) at once,
read only, while the run goes on; with no run going they start the embedded Redis on the stored
data as before. The run's tasks wait in a queue of their own until the test lets some through
(HeldQueue): the run is exactly as far as the test says.
"""

from __future__ import annotations

from conftest import FAST, HeldQueue, read_json, relations_counts, run_producer, started_fleet, wait_until
from producer.embedded import running_server_url
from producer.relations.sample import write_relations_sample
from shared.messages import RELATIONS_STAGE
from shared.store import RunStore, connect

RUN = "watched"


def stage_row(output: str) -> list[str]:
    """The run's row of the status table: run, stage, done, failed, in flight, total, ..."""
    [row] = [line.split() for line in output.splitlines() if line.startswith(f"{RUN} ")]
    return row


def test_status_and_report_read_a_running_one_command_run(model_cache, tmp_path):
    stage1, input_path = write_relations_sample(tmp_path / "sample")
    pairs, _, _ = relations_counts(stage1, input_path)
    work = tmp_path / "work"
    env = {**FAST, "EVALFLEET_WORK_DIR": str(work), "EVALFLEET_MODEL_CACHE": str(model_cache)}
    # No local workers: the test starts them on the run's Redis once its tasks are held.
    producer = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                            "--run", RUN, "--no-local-workers",
                            env={**env, "EVALFLEET_QUEUE_RELATIONS": "relations-held",
                                 "EVALFLEET_STALL_SECONDS": "3600"}, wait=False)
    try:
        def running() -> str | None:
            assert producer.poll() is None, producer.communicate()[0]
            return running_server_url(work / "redis")

        url = wait_until(running, 60, "the run's Redis")
        held = HeldQueue(url, "relations", "relations-held")
        store = RunStore(connect(url), RUN)

        def every_task_sent() -> bool:
            left = store.unfinished(RELATIONS_STAGE) if store.exists() else []
            return bool(left) and sorted(k for keys in held.waiting() for k in keys) == sorted(left)

        wait_until(every_task_sent, 120, "every task sent")
        with started_fleet({**env, "EVALFLEET_BROKER_URL": url}, ["relations"], tmp_path):
            released = held.release(at_least=1)
            wait_until(lambda: all(store.is_done(RELATIONS_STAGE, released)), 180, "the released pairs done")

            status = run_producer("status", "--run", RUN, env=env, timeout=60)
            assert status.returncode == 0, status.stdout + status.stderr
            assert f"127.0.0.1:{url.rsplit(':', 1)[1]}" in status.stdout  # the run's own server
            # done, failed, in flight, total: as far as the test let the run go, and no further.
            assert stage_row(status.stdout)[1:6] == ["relations", str(len(released)), "0", "0", str(pairs)]

            report = run_producer("report", "relations", "--run", RUN, "--output",
                                  str(tmp_path / "so_far.json"), env=env, timeout=60)
            assert report.returncode == 0, report.stdout + report.stderr
            assert len(read_json(tmp_path / "so_far.json")["results"]) == len(released)

            assert producer.poll() is None  # the run goes on
            held.release_rest()
            out, _ = producer.communicate(timeout=300)
            assert producer.returncode == 0, out
    finally:
        if producer.poll() is None:  # the test failed: its Redis goes with it, held queue and all
            producer.kill()
    # Each command wrote its own log; the run's log has nothing of theirs.
    logs = work / "logs"
    assert "reading the running run's Redis" in (logs / "status.log").read_text()
    assert "reading the running run's Redis" in (logs / "report.log").read_text()
    assert "reading the running run's Redis" not in (logs / "producer.log").read_text()

    # No run going: status starts the embedded Redis on the stored data, as before.
    after = run_producer("status", "--run", RUN, env=env, timeout=60)
    assert after.returncode == 0, after.stdout + after.stderr
    assert stage_row(after.stdout)[1:6] == ["relations", str(pairs), "0", "0", str(pairs)]
