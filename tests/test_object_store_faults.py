"""Faults of a fleet whose runs' files are in an object store (a real S3-compatible server,
SeaweedFS, reached through tests/s3_relay.py where the test cuts an upload or stops the store):
nothing torn, nothing redone, nothing mixed, nothing hangs."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from PIL import Image

from conftest import frozen, private_env, read_json, run_producer, started_fleet, wait_until, worker_processes
from producer.editbench.sample import write_editbench_sample
from producer.embedded import EmbeddedRedis
from producer.relations.sample import write_relations_sample
from s3_relay import StoreRelay
from seaweedfs import BUCKET
from shared.messages import EDIT_STAGE, RELATIONS_STAGE, SCORE_STAGE
from shared.store import RunStore, connect


def first_category(directory: Path) -> Path:
    """The editbench sample cut to its first category: three edits, three scores."""
    categories = json.loads(write_editbench_sample(directory).read_text(encoding="utf-8"))
    first = next(iter(categories))
    benchmark = directory / "benchmark.json"
    benchmark.write_text(json.dumps({first: categories[first]}, ensure_ascii=False), encoding="utf-8")
    return benchmark


def editbench_run(benchmark: Path, run: str, env: dict[str, str], **popen):
    return run_producer("run", "editbench", "--benchmark", str(benchmark), "--run", run,
                        "--output", str(benchmark.parent / f"{run}.json"),
                        env={**env, "EVALFLEET_ARTIFACT_ROOT": f"s3://{BUCKET}/runs"}, **popen)


def test_an_edit_worker_killed_mid_upload_leaves_no_torn_object_and_the_rerun_redoes_nothing(
        s3_server, model_cache, tmp_path):
    benchmark, run = first_category(tmp_path / "sample"), "killed-upload"
    edited = f"s3://{BUCKET}/runs/{run}/edited/"
    # The second edit's upload is held: its head and first bytes reach the store, the rest never.
    hold = f"PUT /{BUCKET}/runs/{run}/edited/".encode()
    with EmbeddedRedis(tmp_path / "redis") as server, StoreRelay(s3_server.endpoint, hold, let_through=1) as relay:
        producer = private_env(server, model_cache, tmp_path / "producer", **s3_server.env())
        host = {**private_env(server, model_cache, tmp_path / "host"), **s3_server.env(),
                "AWS_ENDPOINT_URL": relay.endpoint}
        with started_fleet(host, ["edit", "score"], tmp_path) as fleet:
            proc = editbench_run(benchmark, run, producer, wait=False)
            wait_until(lambda: relay.holding.is_set() or proc.poll() is not None, 300, "an upload held mid-way")
            assert relay.holding.is_set(), proc.communicate()[0]
            main, [child] = worker_processes(fleet.proc.pid)
            with frozen([main]):  # no task is redelivered until the store is looked at
                child.kill()
                relay.drop_held()
                assert len(s3_server.filesystem().find(edited.removeprefix("s3://"))) == 1
            output, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, output
            rerun = editbench_run(benchmark, run, producer)
        store = RunStore(connect(server.url), run)
        edits, executed = store.done(EDIT_STAGE), store.stats(EDIT_STAGE)["edits_executed"]
        scored = store.stats(SCORE_STAGE)["scores_executed"]

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    # Each edit was made and scored once: the one killed mid-upload again, the others never.
    assert len(edits) == executed == scored == 3
    fs = s3_server.filesystem()
    assert sorted(fs.find(edited.removeprefix("s3://"))) == sorted(e["edited_path"].removeprefix("s3://")
                                                                   for e in edits.values())
    for edit in edits.values():  # each object whole: the bytes recorded, an image to its end
        data = fs.cat_file(edit["edited_path"])
        assert hashlib.sha256(data).hexdigest() == edit["edited_digest"]
        Image.open(io.BytesIO(data)).load()


def test_the_store_stopped_mid_run_fails_what_is_left_with_its_answer_after_retries(
        s3_server, model_cache, tmp_path):
    benchmark, run = first_category(tmp_path / "sample"), "store-stopped"
    hold = f"PUT /{BUCKET}/runs/{run}/edited/".encode()
    with EmbeddedRedis(tmp_path / "redis") as server, StoreRelay(s3_server.endpoint, hold, let_through=1) as relay:
        producer = private_env(server, model_cache, tmp_path / "producer", **s3_server.env())
        # One attempt per request of the store's client; one retry per task.
        host = {**private_env(server, model_cache, tmp_path / "host"), **s3_server.env(),
                "AWS_ENDPOINT_URL": relay.endpoint, "AWS_MAX_ATTEMPTS": "1", "EVALFLEET_TASK_MAX_RETRIES": "1"}
        with started_fleet(host, ["edit", "score"], tmp_path):
            proc = editbench_run(benchmark, run, producer, wait=False)
            wait_until(lambda: relay.holding.is_set() or proc.poll() is not None, 300, "an upload held mid-way")
            assert relay.holding.is_set(), proc.communicate()[0]
            relay.stop()  # mid-upload of the second edit, the first one stored
            output, _ = proc.communicate(timeout=300)
        store = RunStore(connect(server.url), run)
        ended = {stage: (store.done(stage), store.failed(stage), store.items(stage))
                 for stage in (EDIT_STAGE, SCORE_STAGE)}

    assert proc.returncode == 1, output  # the run ended, some items failed
    for done, failed, items in ended.values():
        assert set(done) | set(failed) == set(items), "every item ends done or failed"
    edits_done, edits_failed, _ = ended[EDIT_STAGE]
    assert len(edits_done) == 1 and len(edits_failed) == 2
    for stage, (_, failed, _) in ended.items():
        for failure in failed.values():
            assert failure["attempts"] == 2, failure  # retried once, then failed
            assert "StoreUnreachable" in failure["reason"] and f"s3://{BUCKET}/runs/{run}/" in failure["reason"]
            assert "Could not connect to the endpoint URL" in failure["reason"], failure  # the store's answer


def test_an_image_object_changed_after_the_run_was_registered_fails_its_pairs_saying_so(
        s3_server, model_cache, tmp_path):
    stage1, input_path = write_relations_sample(tmp_path / "sample")
    fs = s3_server.filesystem()
    for file in (tmp_path / "sample").rglob("*"):
        if file.is_file():
            fs.pipe_file(f"{BUCKET}/changed/{file.relative_to(tmp_path / 'sample').as_posix()}", file.read_bytes())
    records = read_json(input_path)
    changed = f"s3://{BUCKET}/changed/{records[0]['image_path']}"
    with EmbeddedRedis(tmp_path / "redis") as server:
        env = private_env(server, model_cache, tmp_path / "producer", **s3_server.env())
        registered = run_producer("enqueue", "relations", "--run", "changed",
                                  "--stage1", f"s3://{BUCKET}/changed/{stage1.name}",
                                  "--input", f"s3://{BUCKET}/changed/{input_path.name}", env=env)
        assert registered.returncode == 0, registered.stdout + registered.stderr
        # Another image under the same name, after the run took the first one's digest.
        fs.pipe_file(changed.removeprefix("s3://"), (input_path.parent / records[1]["image_path"]).read_bytes())
        store = RunStore(connect(server.url), "changed")
        worker = private_env(server, model_cache, tmp_path / "worker", **s3_server.env())
        with started_fleet(worker, ["relations"], tmp_path):
            wait_until(lambda: store.progress(RELATIONS_STAGE).finished, 300, "every pair done or failed")
        items, done = store.items(RELATIONS_STAGE), store.done(RELATIONS_STAGE)
        failed = store.failed(RELATIONS_STAGE)

    # The changed image's pairs fail saying so; the other images' pairs are described.
    of_changed = {key for key, item in items.items() if item["image_path"] == changed}
    assert of_changed and set(failed) == of_changed and set(done) == set(items) - of_changed
    assert all(f"{changed}: changed since the run was registered" in f["reason"] for f in failed.values()), failed
