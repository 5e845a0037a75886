"""A run name is one job, one set of inputs and one set of result-changing settings, fixed
at registration; the workers use the run's settings, not their own."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from config import Settings
from conftest import private_env, run_producer, started_fleet, wait_until
from producer.editbench.register import register_editbench
from producer.editbench.sample import write_editbench_sample
from producer.embedded import EmbeddedRedis
from producer.relations.enqueue import result_settings
from producer.run_identity import RunMismatchError
from shared.keys import derive_run_id
from shared.messages import EDIT_STAGE, RELATIONS_STAGE, RELATIONS_TASK
from shared.store import RunStore, connect


@pytest.fixture
def server(tmp_path):
    """A Redis of the test's own: no session worker consumes what the test enqueues."""
    with EmbeddedRedis(tmp_path / "redis") as running:
        yield running


def enqueue(env, sample, *flags):
    stage1, input_path = sample
    return run_producer("enqueue", "relations", "--stage1", str(stage1), "--input", str(input_path),
                        *flags, env=env)


def snapshot(client) -> dict:
    """Every key of the Redis and its content, to show that nothing was written."""
    dump = {}
    for key in client.keys("*"):
        kind = client.type(key)
        dump[key] = {"hash": client.hgetall, "set": client.smembers, "list": lambda k: client.lrange(k, 0, -1),
                     "string": client.get}[kind](key)
    return dump


def test_a_named_run_with_other_settings_is_refused_until_restart(server, model_cache, sample, tmp_path):
    env = private_env(server, model_cache, tmp_path / "work")
    client = connect(server.url)
    first = enqueue(env, sample, "--run", "myrun")
    assert first.returncode == 0, first.stderr
    before = snapshot(client)

    proc = enqueue(env, sample, "--run", "myrun", "--top-k", "3", "--model", "other/model")
    assert proc.returncode == 2, proc.stderr
    assert "top_k: stored 10, now 3" in proc.stderr
    assert "relations_model: stored 'tiny', now 'other/model'" in proc.stderr
    assert "--restart" in proc.stderr and "another --run name" in proc.stderr
    assert snapshot(client) == before  # refused before anything was written

    # Other inputs under the same name: refused the same way.
    stage1, input_path = sample
    records = json.loads(input_path.read_text())
    input_path.write_text(json.dumps(records[:1]))
    proc = enqueue(env, sample, "--run", "myrun")
    assert proc.returncode == 2 and "inputs: stored" in proc.stderr, proc.stderr
    assert snapshot(client) == before

    proc = enqueue(env, sample, "--run", "myrun", "--top-k", "3", "--restart")
    assert proc.returncode == 0, proc.stderr
    store = RunStore(client, "myrun")
    assert store.meta()["top_k"] == 3
    items = [item for item in store.items(RELATIONS_STAGE).values() if not item.get("invalid")]
    assert items and all(len(item["stage1_top_k"]) <= 3 for item in items)


def test_operational_settings_follow_the_latest_command(server, model_cache, sample, tmp_path):
    env = private_env(server, model_cache, tmp_path / "work")
    assert enqueue(env, sample, "--run", "r", "--batch-size", "8").returncode == 0
    proc = enqueue(env, sample, "--run", "r", "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    assert RunStore(connect(server.url), "r").meta()["batch_size"] == 2


def test_a_run_name_of_the_other_job_is_refused(server, model_cache, sample, tmp_path):
    client = connect(server.url)
    settings = Settings(broker_url=server.url, work_dir=tmp_path / "work")
    register_editbench(settings, client, write_editbench_sample(tmp_path / "bench"), "shared-name")
    before = snapshot(client)
    proc = enqueue(private_env(server, model_cache, tmp_path / "work"), sample, "--run", "shared-name")
    assert proc.returncode == 2
    assert "job: stored 'editbench', now 'relations'" in proc.stderr, proc.stderr
    assert snapshot(client) == before


def test_editbench_run_with_another_judge_or_prompts_is_refused(server, tmp_path):
    client = connect(server.url)
    settings = Settings(broker_url=server.url, work_dir=tmp_path / "work")
    benchmark = write_editbench_sample(tmp_path / "bench")
    register_editbench(settings, client, benchmark, "eb")
    before = snapshot(client)
    originals = sorted((settings.artifacts / "eb").rglob("*"))

    with pytest.raises(RunMismatchError, match="judge_model: stored 'tiny', now 'Qwen/judge'"):
        register_editbench(settings.replace(judge_model="Qwen/judge"), client, benchmark, "eb")
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for name in ("default.system.txt", "default.user.txt"):
        (prompts / name).write_text("Score it. {edit_instruction}")
    with pytest.raises(RunMismatchError, match="prompts: stored"):
        register_editbench(settings.replace(prompts_dir=str(prompts)), client, benchmark, "eb")
    with pytest.raises(RunMismatchError, match="edit_steps: stored 0, now 3"):
        register_editbench(settings.replace(edit_steps=3), client, benchmark, "eb")
    assert snapshot(client) == before
    assert sorted((settings.artifacts / "eb").rglob("*")) == originals

    run = register_editbench(settings.replace(prompts_dir=str(prompts)), client, benchmark, "eb",
                             restart=True)
    assert run.store.meta()["prompt_templates"]["default.user.txt"] == "Score it. {edit_instruction}"
    assert run.store.progress(EDIT_STAGE).done == 0


def test_edits_made_elsewhere_are_part_of_the_run_by_their_contents(server, tmp_path):
    client = connect(server.url)
    settings = Settings(broker_url=server.url, work_dir=tmp_path / "work")
    benchmark = write_editbench_sample(tmp_path / "bench")
    edits = tmp_path / "edits"
    edits.mkdir()
    for n, pair_id in enumerate(("物理-1", "物理-2", "环境-1")):  # flat: <pair id>.png
        Image.new("RGB", (16, 16), (40 * n, 0, 0)).save(edits / f"{pair_id}.png")
    plain = register_editbench(settings, client, benchmark)
    made = settings.replace(edits_dir=str(edits))

    first = register_editbench(made, client, benchmark)
    assert first.run_id != plain.run_id
    assert register_editbench(made, client, benchmark).run_id == first.run_id  # the same edits: resumed
    moved = tmp_path / "moved"
    edits.rename(moved)  # the folder's place is not the run's identity; its contents are
    assert register_editbench(settings.replace(edits_dir=str(moved)), client, benchmark).run_id == first.run_id

    Image.new("RGB", (16, 16), "white").save(moved / "物理-2.png")
    changed = register_editbench(settings.replace(edits_dir=str(moved)), client, benchmark)
    assert changed.run_id != first.run_id
    with pytest.raises(RunMismatchError, match="edits: stored"):
        register_editbench(settings.replace(edits_dir=str(moved)), client, benchmark, first.run_id)
    assert first.store.meta()["editor"] == f"external ({moved})"  # the latest command's folder


def test_run_editbench_with_another_judge_exits_2_before_waiting(server, model_cache, tmp_path):
    env = private_env(server, model_cache, tmp_path / "work")
    benchmark = write_editbench_sample(tmp_path / "bench")
    register_editbench(Settings(broker_url=server.url, work_dir=tmp_path / "work"), connect(server.url),
                       benchmark, "eb")
    proc = run_producer("run", "editbench", "--benchmark", str(benchmark), "--run", "eb",
                        env={**env, "EVALFLEET_JUDGE_MODEL": "Qwen/judge"}, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "judge_model: stored 'tiny', now 'Qwen/judge'" in proc.stderr


def test_workers_load_the_run_s_dtype_not_their_own(server, model_cache, sample, tmp_path):
    from shared.store import WORKERS_KEY

    env = private_env(server, model_cache, tmp_path / "work")  # the workers' dtype: auto
    stage1, input_path = sample
    with started_fleet(env, ["relations"], tmp_path, name="dtype"):
        proc = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                            "--output", str(tmp_path / "out.json"),
                            env={**env, "EVALFLEET_DTYPE": "bfloat16"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [beat] = connect(server.url).hvals(WORKERS_KEY)
    assert json.loads(beat)["resident"] == ["vlm tiny bfloat16"]


def test_the_dtype_is_part_of_the_run():
    inputs: list = []
    ids = {derive_run_id("relations", inputs, result_settings(Settings(dtype=dtype)))
           for dtype in ("auto", "float32", "bfloat16")}
    assert len(ids) == 3


def test_workers_score_with_the_run_s_prompts_not_their_own(server, tmp_path):
    from workers.celery_app import settings as worker_settings
    from workers.judging.run_rubric import run_rubric

    prompts = tmp_path / "producer-prompts"
    prompts.mkdir()
    (prompts / "default.system.txt").write_text("the producer's system prompt")
    (prompts / "default.user.txt").write_text("the producer's user prompt: {edit_instruction}")
    assert worker_settings.prompts != prompts
    settings = Settings(broker_url=server.url, work_dir=tmp_path / "work", prompts_dir=str(prompts))
    run = register_editbench(settings, connect(server.url), write_editbench_sample(tmp_path / "b"), "p")
    # The producer's folder may be gone or changed by the time a worker scores.
    (prompts / "default.user.txt").write_text("changed after registration")
    prompt = run_rubric(run.store).prompts["score"].get_full_prompt("物理", "desc", "make it red")
    assert prompt == {"system_prompt": "the producer's system prompt",
                      "user_prompt": "the producer's user prompt: make it red"}


def test_workers_refuse_a_run_without_the_settings_they_need(fleet, fleet_env, redis_client, sample):
    """A run registered by an older producer (no dtype): its items fail at once, saying why."""
    from celery import Celery

    from shared.keys import relation_key
    from shared.relations.data import prepare_data_for_inference

    settings = Settings(top_k=10)
    meta = {"job": "relations", "run_id": "old-run", "batch_size": 8, "workers_per_gpu": 1,
            **result_settings(settings)}
    del meta["dtype"]
    store = RunStore(redis_client, "old-run")
    store.register(meta)
    pairs = prepare_data_for_inference(*sample, 10).pairs[:2]
    store.add_items(RELATIONS_STAGE, {relation_key(p["image_id"], p["subject"], p["object"]): p
                                      for p in pairs})
    keys = list(store.items(RELATIONS_STAGE))
    Celery(broker=fleet_env["EVALFLEET_BROKER_URL"]).send_task(
        RELATIONS_TASK, args=["old-run", keys], queue="relations", serializer="json")
    failed = wait_until(lambda: len(store.failed(RELATIONS_STAGE)) == len(keys) and store.failed(RELATIONS_STAGE),
                        60, "the items failed")
    for record in failed.values():
        assert "without the setting 'dtype'" in record["reason"] and "--restart" in record["reason"]
        assert record["attempts"] == 1  # not retried: retrying cannot help


def test_a_relations_image_replaced_on_disk_is_another_run(server, model_cache, sample, tmp_path):
    # The input files are unchanged: only an image's pixels are. Its old descriptions must not
    # count as done for the new picture.
    env = private_env(server, model_cache, tmp_path / "work")
    client = connect(server.url)
    assert enqueue(env, sample, "--run", "named").returncode == 0
    first = enqueue(env, sample)
    assert first.returncode == 0, first.stderr
    first_id = first.stdout.split()[-1]

    image = sample[1].parent / "images" / "2343730.png"
    with Image.open(image) as old:
        Image.new("RGB", old.size, "navy").save(image)  # same size and boxes, another picture
    second = enqueue(env, sample)
    assert second.returncode == 0, second.stderr
    second_id = second.stdout.split()[-1]
    assert second_id != first_id

    before = snapshot(client)
    proc = enqueue(env, sample, "--run", "named")
    assert proc.returncode == 2 and "inputs: stored" in proc.stderr, proc.stderr
    assert snapshot(client) == before

    image.unlink()  # a missing image: its pairs fail on the worker; the run is registered
    third = enqueue(env, sample)
    assert third.returncode == 0, third.stderr
    assert third.stdout.split()[-1] not in (first_id, second_id)
