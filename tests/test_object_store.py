"""Artifacts in an object store (a real S3-compatible server, SeaweedFS): what a fleet on hosts
that share no filesystem relies on."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import ROOT, private_env, read_json, run_producer, started_fleet, worker_processes
from producer.editbench.sample import write_editbench_sample
from producer.embedded import EmbeddedRedis
from producer.relations.sample import write_relations_sample
from shared.editbench.data import prepare_benchmark
from seaweedfs import BUCKET, READER
from shared import storage
from shared.messages import EDIT_STAGE, SCORE_STAGE
from shared.store import RunStore, connect

# Each writer waits for a line on its stdin ("go"), then writes its own bytes to the same URL once.
WRITER = """
import sys
from shared import storage
sys.stdin.readline()
print(storage.write_once(sys.argv[1], sys.argv[2].encode()))
"""


def test_of_two_concurrent_writers_one_object_stays_and_both_name_its_bytes(s3_env):
    url = f"s3://{BUCKET}/write-once/edit.png"
    env = {**s3_env, "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, url, text], cwd=ROOT, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
               for text in ("first writer", "second writer")]
    for writer in writers:  # both go at once, whichever of them wins
        writer.stdin.write("go\n")
        writer.stdin.flush()
    outputs = [w.communicate(timeout=120) for w in writers]
    assert [w.returncode for w in writers] == [0, 0], outputs

    assert storage.list_under(f"s3://{BUCKET}/write-once") == [url]
    stayed = storage.read_bytes(url)
    assert stayed in (b"first writer", b"second writer")
    assert {out.strip() for out, _ in outputs} == {hashlib.sha256(stayed).hexdigest()}
    # A later execution (a redelivered task) leaves it too, and learns its digest.
    assert storage.write_once(url, b"third") == hashlib.sha256(stayed).hexdigest()
    assert storage.read_bytes(url) == stayed


def test_a_missing_object_is_an_error_naming_its_url(s3_env):
    url = f"s3://{BUCKET}/nothing/here.png"
    assert not storage.exists(url)
    with pytest.raises(storage.ObjectMissing, match=f"^{url}: cannot read the object: no such object"):
        storage.read_bytes(url)


def test_a_missing_bucket_or_denied_credentials_stop_the_run_at_its_start_naming_the_url(s3_server, tmp_path):
    benchmark = write_editbench_sample(tmp_path / "sample")
    base = {"EVALFLEET_WORK_DIR": str(tmp_path / "work")}
    cases = [("s3://no-such-bucket/runs", s3_server.env(), "NoSuchBucket"),
             (f"s3://{BUCKET}/runs", s3_server.env(READER), "AccessDenied"),
             (f"s3://{BUCKET}/runs", {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"},
              "SignatureDoesNotMatch")]
    for root, credentials, answer in cases:
        proc = run_producer("run", "editbench", "--benchmark", str(benchmark),
                            env={**base, **credentials, "EVALFLEET_ARTIFACT_ROOT": root}, timeout=120)
        said = proc.stdout + proc.stderr
        assert proc.returncode == 2, said
        assert f"EVALFLEET_ARTIFACT_ROOT: {root}: cannot write under it" in said and answer in said, said
        assert credentials["AWS_SECRET_ACCESS_KEY"] not in said
    assert not (tmp_path / "work" / "redis").exists()  # nothing was started or registered


def _host(tmp_path: Path, name: str, server: EmbeddedRedis, s3_server) -> dict[str, str]:
    """A worker host's environment: its own work directory, HOME and model cache; the object
    store's endpoint and credentials; no artifact root (the items name their objects)."""
    home = tmp_path / name
    (home / "home").mkdir(parents=True)
    return private_env(server, home / "models", home / "work", HOME=str(home / "home"), **s3_server.env())


def test_editbench_on_two_hosts_sharing_no_directory_scores_as_a_local_run(s3_server, tmp_path):
    categories = json.loads(write_editbench_sample(tmp_path / "sample").read_text(encoding="utf-8"))
    benchmark = tmp_path / "benchmark.json"  # the first category's pairs: three edits, three scores
    first = next(iter(categories))
    benchmark.write_text(json.dumps({first: categories[first]}, ensure_ascii=False), encoding="utf-8")
    with EmbeddedRedis(tmp_path / "redis") as server:
        producer = private_env(server, tmp_path / "producer" / "models", tmp_path / "producer" / "work",
                               **s3_server.env())
        editing, scoring = _host(tmp_path, "edit-host", server, s3_server), _host(tmp_path, "score-host", server,
                                                                                 s3_server)
        with (started_fleet(editing, ["edit"], tmp_path / "edit-host", name="edithost") as edit_fleet,
              started_fleet(scoring, ["score"], tmp_path / "score-host", name="scorehost") as score_fleet):
            stored = run_producer("run", "editbench", "--benchmark", str(benchmark), "--run", "in-store",
                                  "--output", str(tmp_path / "in-store.json"),
                                  env={**producer, "EVALFLEET_ARTIFACT_ROOT": f"s3://{BUCKET}/runs"})
            assert stored.returncode == 0, stored.stdout + stored.stderr
            local = run_producer("run", "editbench", "--benchmark", str(benchmark), "--run", "local",
                                 "--output", str(tmp_path / "local.json"),
                                 env={**producer, "EVALFLEET_ARTIFACT_ROOT": str(tmp_path / "shared-disk")})
            assert local.returncode == 0, local.stdout + local.stderr
            editors = {p.pid for p in worker_processes(edit_fleet.proc.pid)[1]}
            scorers = {p.pid for p in worker_processes(score_fleet.proc.pid)[1]}
        exported = run_producer("export", "editbench", "--run", "in-store", "--layout", "imgedit",
                                str(tmp_path / "exported"), env=producer)
        store = RunStore(connect(server.url), "in-store")
        edits, scores = store.done(EDIT_STAGE), store.done(SCORE_STAGE)
        executed = (store.stats(EDIT_STAGE)["edits_executed"], store.stats(SCORE_STAGE)["scores_executed"])
        local_edits = RunStore(connect(server.url), "local").done(EDIT_STAGE)

    assert len(edits) == len(scores) == 3 and executed == (3, 3)  # every pair done once
    fs = s3_server.filesystem()
    for key, edit in edits.items():
        # The edit is an object of the store, made on one host and scored on the other.
        assert edit["edited_path"].startswith(f"s3://{BUCKET}/runs/in-store/edited/")
        assert hashlib.sha256(fs.cat_file(edit["edited_path"])).hexdigest() == edit["edited_digest"]
        assert int(edit["worker"].rpartition(":")[2]) in editors
        assert int(scores[key]["worker"].rpartition(":")[2]) in scorers
        assert edit["edited_digest"] == local_edits[key]["edited_digest"]
    # Neither host kept a run's file of its own: the scoring host's only copies are its cache's.
    for host in ("edit-host", "score-host"):
        assert not list((tmp_path / host).rglob("*.png"))
    assert len(list((tmp_path / "score-host" / "work" / "object-cache").iterdir())) >= 3

    in_store, on_disk = read_json(tmp_path / "in-store.json"), read_json(tmp_path / "local.json")
    assert ([(r["pair_id"], r["score"]) for r in in_store["categories"][first]["results"]]
            == [(r["pair_id"], r["score"]) for r in on_disk["categories"][first]["results"]])
    assert exported.returncode == 0, exported.stdout + exported.stderr
    written = sorted(p for p in (tmp_path / "exported").rglob("*.png"))
    assert sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in written) == sorted(
        e["edited_digest"] for e in edits.values())


def test_relations_images_by_url_describe_as_local_files_and_a_missing_object_fails_its_pairs(
        s3_server, model_cache, tmp_path):
    stage1, input_path = write_relations_sample(tmp_path / "sample")
    records = read_json(input_path)
    fs = s3_server.filesystem()
    for record in records[1:]:  # the first image's object is never uploaded
        fs.pipe_file(f"{BUCKET}/inputs/{record['image_path']}", (input_path.parent / record["image_path"]).read_bytes())
    missing = f"s3://{BUCKET}/inputs/{records[0]['image_path']}"
    remote = tmp_path / "remote" / "input.json"  # a folder without the images: only the URLs lead to them
    remote.parent.mkdir()
    remote.write_text(json.dumps([{**r, "image_path": f"s3://{BUCKET}/inputs/{r['image_path']}"} for r in records]),
                      encoding="utf-8")
    with EmbeddedRedis(tmp_path / "redis") as server:
        env = private_env(server, model_cache, tmp_path / "work", **s3_server.env())
        with started_fleet(_host(tmp_path, "worker-host", server, s3_server) | {
                "EVALFLEET_MODEL_CACHE": str(model_cache)}, ["relations"], tmp_path / "worker-host"):
            by_url = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(remote),
                                  "--output", str(tmp_path / "by-url.json"), env=env)
            local = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                                 "--output", str(tmp_path / "local.json"), env=env)
    assert local.returncode == 0, local.stdout + local.stderr
    assert (tmp_path / "by-url.json").exists(), by_url.stdout + by_url.stderr
    on_disk, in_store = read_json(tmp_path / "local.json"), read_json(tmp_path / "by-url.json")
    first = str(records[0]["image_id"])
    texts = {(str(r["image_id"]), r["subject"], r["object"]): r["stage2_generated"] for r in on_disk["results"]}
    assert {(str(r["image_id"]), r["subject"], r["object"]): r["stage2_generated"] for r in in_store["results"]} == {
        key: generated for key, generated in texts.items() if key[0] != first}
    failed = in_store["failed"]
    assert failed and all(f"{missing}: cannot read the object" in json.dumps(f) for f in failed), failed
    assert len(failed) == sum(1 for key in texts if key[0] == first)


def test_editbench_original_images_by_url_read_as_the_files_and_a_missing_object_fails_its_pair(
        s3_env, tmp_path):
    local = write_editbench_sample(tmp_path / "local", image_files=True)
    categories = json.loads(local.read_text(encoding="utf-8"))
    pairs = [pair for category in categories.values() for pair in category]
    for pair in pairs[1:]:  # the first pair's object is never uploaded
        storage.write_once(f"s3://{BUCKET}/benchmark/{pair['original_image_path']}",
                      (local.parent / pair["original_image_path"]).read_bytes())
    missing = f"s3://{BUCKET}/benchmark/{pairs[0]['original_image_path']}"
    for pair in pairs:
        pair["original_image_path"] = f"s3://{BUCKET}/benchmark/{pair['original_image_path']}"
    remote = tmp_path / "remote" / "benchmark.json"  # a folder without the images
    remote.parent.mkdir()
    remote.write_text(json.dumps(categories), encoding="utf-8")

    on_disk, by_url = prepare_benchmark(local), prepare_benchmark(remote)
    [(failed_key, reason)] = by_url.failures.items()
    assert f"{missing}: cannot read the object: no such object" in reason
    images = {(p.category, p.pair_id): [i.data for i in p.images] for p in by_url.pairs}
    assert images == {(p.category, p.pair_id): [i.data for i in p.images] for p in on_disk.pairs
                      if (p.category, p.pair_id) in images}
    assert len(images) == len(on_disk.pairs) - 1
    assert by_url.image_digests == [hashlib.sha256(data).hexdigest() for found in images.values() for data in found]


def test_an_image_by_http_url_reads_as_its_file_and_a_missing_one_fails_its_pair(tmp_path):
    local = write_editbench_sample(tmp_path / "local", image_files=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(local.parent))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        categories = json.loads(local.read_text(encoding="utf-8"))
        pairs = [pair for category in categories.values() for pair in category]
        for pair in pairs:
            pair["original_image_path"] = f"{base}/{pair['original_image_path']}"
        pairs[0]["original_image_path"] = missing = f"{base}/images/not-there.png"
        remote = tmp_path / "remote" / "benchmark.json"
        remote.parent.mkdir()
        remote.write_text(json.dumps(categories), encoding="utf-8")
        by_url = prepare_benchmark(remote)
        server.shutdown()
    [reason] = by_url.failures.values()
    assert f"{missing}: cannot read the object" in reason
    on_disk = {(p.category, p.pair_id): [i.data for i in p.images] for p in prepare_benchmark(local).pairs}
    assert len(by_url.pairs) == len(on_disk) - 1
    assert all([i.data for i in p.images] == on_disk[(p.category, p.pair_id)] for p in by_url.pairs)
