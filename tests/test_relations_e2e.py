"""The relations job end to end: real Redis, real Celery workers, the tiny Qwen3-VL."""

from __future__ import annotations

import json

from conftest import FAST, kill_mid_task, read_json, relations_counts, run_producer, wait_until
from producer.embedded import EmbeddedRedis
from producer.relations.sample import ensure_relations_sample
from shared.keys import relation_key
from shared.relations.data import prepare_data_for_inference
from shared.store import RunStore, connect

SUMMARY_KEYS = {"total_pairs", "total_images", "top_k_relations", "generation_max_tokens",
                "generation_temperature", "num_gpus", "workers_per_gpu"}
RESULT_KEYS = {"image_id", "subject", "object", "stage1_top_k", "stage2_generated", "has_gt",
               "gt_predicates"}


def check_spec_format(report: dict) -> None:
    assert SUMMARY_KEYS <= set(report["summary"])
    for result in report["results"]:
        assert set(result) == RESULT_KEYS
        sims = [c["similarity"] for c in result["stage1_top_k"]]
        assert sims == sorted(sims, reverse=True)
        assert [g["predicate"] for g in result["stage2_generated"]] == \
               [c["predicate"] for c in result["stage1_top_k"]]
        for generated in result["stage2_generated"]:
            assert set(generated) == {"predicate", "similarity", "generated_description"}
            assert isinstance(generated["generated_description"], str)


def test_sample_run_writes_the_spec_report(fleet, fleet_env, redis_client, sample, tmp_path):
    stage1, input_path = sample
    output = tmp_path / "stage2_generated_results.json"
    proc = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                        "--output", str(output), env=fleet_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = read_json(output)
    check_spec_format(report)
    summary = report["summary"]
    pairs, images, _ = relations_counts(stage1, input_path)
    assert (summary["total_pairs"], summary["total_images"]) == (pairs, images)
    assert summary["top_k_relations"] == 10 and summary["generation_max_tokens"] == 8
    assert summary["generation_temperature"] == 0.1
    assert summary["engine"] == "paged"  # the relations job's one local engine
    assert report["failed"] == []
    by_pair = {(str(r["image_id"]), r["subject"], r["object"]): r for r in report["results"]}
    # 11 usable candidates, cut to the top 10; "no relation" never appears.
    assert len(by_pair[("2343729", "windshield", "train")]["stage1_top_k"]) == 10
    assert all(c["predicate"] != "no relation" for r in report["results"] for c in r["stage1_top_k"])
    # Image 2343731 has a string id in the input file and is matched all the same.
    assert ("2343731", "dog", "grass") in by_pair
    # The all-"no relation" pair of every image is dropped.
    assert ("2343729", "track", "train") not in by_pair


def test_rerun_generates_nothing_new(fleet, fleet_env, redis_client, sample, tmp_path):
    stage1, input_path = sample
    args = ("run", "relations", "--stage1", str(stage1), "--input", str(input_path), "--run", "resume")
    first = run_producer(*args, "--output", str(tmp_path / "a.json"), env=fleet_env)
    assert first.returncode == 0, first.stderr
    stats = RunStore(redis_client, "resume").stats("relations")
    assert stats["descriptions_generated"] == relations_counts(stage1, input_path)[2]
    second = run_producer(*args, "--output", str(tmp_path / "b.json"), env=fleet_env)
    assert second.returncode == 0, second.stderr
    assert RunStore(redis_client, "resume").stats("relations") == stats
    assert read_json(tmp_path / "a.json") == read_json(tmp_path / "b.json")


def test_worker_child_killed_mid_task_loses_and_duplicates_nothing(fleet, fleet_env, redis_client,
                                                                   sample, tmp_path):
    stage1, input_path = sample
    env = {**fleet_env, "EVALFLEET_MAX_NEW_TOKENS": "48"}  # tasks long enough to be caught running
    output = tmp_path / "out.json"
    producer = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                            "--run", "killed", "--output", str(output), env=env, wait=False)
    store = RunStore(redis_client, "killed")
    pairs = len(prepare_data_for_inference(stage1, input_path, 10).pairs)

    def some_done() -> bool:
        assert producer.poll() is None, "the run ended before a worker could be killed"
        return store.exists() and store.progress("relations").done > 0

    wait_until(some_done, 120, "some pairs done")
    kill_mid_task(fleet.proc.pid, redis_client, producer)
    out, _ = producer.communicate(timeout=240)
    assert producer.returncode == 0, out
    report = read_json(output)
    keys = [relation_key(r["image_id"], r["subject"], r["object"]) for r in report["results"]]
    assert len(keys) == len(set(keys)) == pairs
    assert report["failed"] == []


def test_bad_records_fail_alone_and_are_reported(fleet, fleet_env, redis_client, sample, tmp_path):
    stage1, input_path = sample
    data = json.loads(stage1.read_text())
    cands = data["per_image_top100_candidates"]
    cands["2343730"].append({"subject": "man", "object": "unicorn", "predicted_predicate": "riding",
                             "similarity": 0.9, "has_gt": False, "gt_predicates": []})
    cands["999"] = [{"subject": "a", "object": "b", "predicted_predicate": "on", "similarity": 0.5}]
    usable_pairs = relations_counts(stage1, input_path, without_image="2343733")[0]
    stage1.write_text(json.dumps(data))
    images = json.loads(input_path.read_text())
    images[4]["image_path"] = "images/missing.png"  # 2343733: two pairs, the file is not there
    input_path.write_text(json.dumps(images))
    output = tmp_path / "out.json"
    proc = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                        "--output", str(output), env=fleet_env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = read_json(output)
    reasons = {f["key"]: f["reason"] for f in report["failed"]}
    assert "unicorn" in reasons["2343730|man|unicorn"] and str(input_path) in reasons["2343730|man|unicorn"]
    assert "999" in reasons["999|a|b"]
    assert "missing.png" in reasons["2343733|woman|bag"] and "does not exist" in reasons["2343733|woman|bag"]
    assert report["summary"]["total_pairs"] == usable_pairs  # all but the missing image's pairs
    assert "unicorn" in proc.stdout


def test_unusable_input_file_exits_2_and_registers_nothing(fleet_env, redis_client, sample):
    stage1, input_path = sample
    stage1.write_bytes(b"\xff\xfe not utf-8")
    proc = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                        env=fleet_env)
    assert proc.returncode == 2
    assert str(stage1) in proc.stderr and "UTF-8" in proc.stderr
    assert redis_client.smembers("evalfleet:runs") == set()


def test_one_command_mode_embeds_redis_and_workers_then_resumes(model_cache, tmp_path):
    env = {**FAST, "EVALFLEET_WORK_DIR": str(tmp_path / "work"), "EVALFLEET_MODEL_CACHE": str(model_cache)}
    first = run_producer("run", "relations", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    [report_path] = (tmp_path / "work").glob("relations-*/stage2_generated_results.json")
    check_spec_format(read_json(report_path))
    second = run_producer("run", "relations", env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "sent 0 pairs in 0 tasks" in second.stderr
    # The embedded Redis was stopped; its data survived for the rerun and for us.
    with EmbeddedRedis(tmp_path / "work" / "redis") as server:
        store = RunStore(connect(server.url), report_path.parent.name)
        pairs, _, descriptions = relations_counts(*ensure_relations_sample(tmp_path / "work" / "sample"))
        assert store.stats("relations")["descriptions_generated"] == descriptions
        assert store.progress("relations").done == pairs


def test_tasks_with_the_most_prompts_are_queued_first(sample, tmp_path):
    """No long task is left to start last while the other GPUs idle (no worker here: the queue
    is read as Redis holds it)."""
    import base64

    import msgpack

    from config import Settings
    from producer.dispatch import celery_client
    from producer.relations.enqueue import enqueue_relations

    stage1, input_path = sample
    with EmbeddedRedis(tmp_path / "redis") as server:
        settings = Settings(broker_url=server.url, task_prompts=10)
        client = connect(server.url)
        enqueued = enqueue_relations(settings, celery_client(settings), client, stage1, input_path, "order")
        # kombu pushes on the left and workers pop on the right: the first task sent is last here.
        raw = reversed(client.lrange(settings.queue_relations, 0, -1))
        tasks = [msgpack.unpackb(base64.b64decode(json.loads(m)["body"]))[0][1] for m in raw]
        items = RunStore(client, "order").get_items("relations", [k for t in tasks for k in t])
    prompts_by_key = {key: len(item["stage1_top_k"]) for key, item in
                      zip([k for t in tasks for k in t], items)}
    sizes = [sum(prompts_by_key[k] for k in task) for task in tasks]
    assert len(tasks) == enqueued.tasks_sent > 2
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
