"""The relations job through an OpenAI-compatible server: `transformers serve` on the tiny
Qwen3-VL (CPU), behind a real HTTP proxy that refuses, fails, sends a body that is not a chat
completion, or goes away mid-answer (tests/endpoint_proxy.py); real Redis and Celery workers
that load no model."""

from __future__ import annotations

import base64
import json

import pytest
from PIL import Image

from conftest import private_env, read_json, relations_counts, run_producer, started_fleet
from endpoint_proxy import FORWARD, HOLD, Reply, ScriptedProxy
from producer.embedded import EmbeddedRedis
from shared.keys import relation_key
from shared.relations.data import prepare_data_for_inference
from shared.relations.prompt import build_relation_prompt
from shared.store import WORKERS_KEY, RunStore, connect
from workers.endpoints.client import EndpointClient
from workers.relations.endpoint import EndpointRelations

NOT_A_COMPLETION = b"<html><body>502 Bad Gateway</body></html>"
# What the proxy does with the first requests of the main run: each is retried or fails its pair.
SCRIPT = [Reply(429, headers={"Retry-After": "1"}), Reply(503), Reply(200, NOT_A_COMPLETION, {"Content-Type": "text/html"})]


@pytest.fixture(scope="module")
def endpoint_fleet(transformers_serve, tiny_vlm_dir, model_cache, tmp_path_factory):
    """(Redis client, environment) of a private Redis and one CPU worker on ``relations``, with
    the endpoint backend's worker settings; each run names its own proxy's URL."""
    tmp = tmp_path_factory.mktemp("relations-endpoint")
    with EmbeddedRedis(tmp / "redis") as server:
        env = private_env(server, model_cache, tmp / "work", EVALFLEET_RELATIONS_BACKEND="endpoint",
                          EVALFLEET_RELATIONS_ENDPOINT_URL=transformers_serve,
                          EVALFLEET_RELATIONS_ENDPOINT_MODEL=str(tiny_vlm_dir),
                          EVALFLEET_RELATIONS_ENDPOINT_CONCURRENCY="4",
                          EVALFLEET_RELATIONS_ENDPOINT_MAX_RETRIES="2", EVALFLEET_TEMPERATURE="0")
        with started_fleet(env, ["relations"], tmp, name="endpoint"):
            yield connect(server.url), env


@pytest.fixture
def proxies(transformers_serve):
    started: list[ScriptedProxy] = []

    def start(script: list) -> ScriptedProxy:
        started.append(ScriptedProxy(transformers_serve, script))
        return started[-1]

    yield start
    for proxy in started:
        if not proxy.stopped.is_set():
            proxy.stop()


def run_through(proxy: ScriptedProxy, env: dict, sample, output, *flags: str, wait: bool = True):
    stage1, input_path = sample
    return run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                        "--output", str(output), *flags, wait=wait,
                        env={**env, "EVALFLEET_RELATIONS_ENDPOINT_URL": proxy.url})


def test_a_run_through_the_endpoint_retries_fails_only_bad_answers_and_resumes(
        endpoint_fleet, proxies, tiny_vlm_dir, vlm, sample, tmp_path):
    client, env = endpoint_fleet
    proxy = proxies(SCRIPT)
    pairs, _, descriptions = relations_counts(*sample)
    first = run_through(proxy, env, sample, tmp_path / "a.json", "--run", "through")
    assert first.returncode == 1, first.stdout + first.stderr  # the pair of the malformed answer
    report = read_json(tmp_path / "a.json")
    summary = report["summary"]
    assert (summary["backend"], summary["model"], summary["endpoint_url"]) == ("endpoint", str(tiny_vlm_dir), proxy.url)
    assert summary["endpoint_retries"] == 2  # the 429 (after its Retry-After) and the 503
    [failed] = report["failed"]
    assert failed["reason"].startswith(f"the relations endpoint {proxy.url} (model '{tiny_vlm_dir}') sent "
                                       "something that is not a chat completion (not JSON")
    assert f"its first bytes: {NOT_A_COMPLETION!r}" in failed["reason"]
    keys = [relation_key(r["image_id"], r["subject"], r["object"]) for r in report["results"]]
    assert len(keys) == len(set(keys)) == pairs - 1 and failed["key"] not in keys
    # One request per prompt, and the two retried: the failed pair's other prompts went out too
    # (their answers are not kept), only the pairs done count their descriptions.
    store = RunStore(client, "through")
    failed_prompts = len(prepare_pairs(sample)[failed["key"]]["stage1_top_k"])
    assert store.stats("relations")["descriptions_generated"] == descriptions - failed_prompts
    assert len(proxy.requests) == descriptions + 2
    # Cut at max_new_tokens (8): flagged, and counted in the summary.
    flags = [d.get("truncated", False) for r in report["results"] for d in r["stage2_generated"]]
    assert summary["truncated_descriptions"] == sum(flags) > 0
    # The worker loaded no model (its residency pool never started) and used no device.
    assert not any(json.loads(v)["resident"] for v in client.hgetall(WORKERS_KEY).values())
    assert store.devices() == set() and summary["num_gpus"] == 0

    # Greedy: the server's text is the local engine's on the same model (both float32 on the CPU).
    local = local_descriptions(vlm, sample, keys)
    served = {relation_key(r["image_id"], r["subject"], r["object"]): [d["generated_description"] for d in
                                                                        r["stage2_generated"]] for r in report["results"]}
    assert served == local

    # The rerun sends the failed pair only; the done pairs are not redone.
    done_before = store.done("relations")
    second = run_through(proxy, env, sample, tmp_path / "b.json", "--run", "through")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "sent 1 pairs in 1 tasks" in second.stderr
    assert len(proxy.requests) == descriptions + 2 + failed_prompts
    assert {k: v for k, v in store.done("relations").items() if k in done_before} == done_before
    assert store.stats("relations")["descriptions_generated"] == descriptions
    third = run_through(proxy, env, sample, tmp_path / "c.json", "--run", "through")
    assert third.returncode == 0 and "sent 0 pairs in 0 tasks" in third.stderr
    assert len(proxy.requests) == descriptions + 2 + failed_prompts


def test_a_server_that_goes_away_mid_run_ends_every_pair_done_or_failed(endpoint_fleet, proxies, tiny_vlm_dir,
                                                                        sample, tmp_path):
    client, env = endpoint_fleet
    proxy = proxies([FORWARD] * 3 + [HOLD])
    producer = run_through(proxy, env, sample, tmp_path / "gone.json", "--run", "gone", "--top-k", "2", wait=False)
    assert proxy.holding.wait(120), "no request reached the proxy"
    proxy.stop()  # the held request is dropped unanswered; later ones find nothing listening
    out, _ = producer.communicate(timeout=240)
    assert producer.returncode == 1, out
    report = read_json(tmp_path / "gone.json")
    pairs = len(prepare_pairs(sample))
    assert report["summary"]["pending_pairs"] == 0
    assert len(report["results"]) + len(report["failed"]) == pairs and report["failed"]
    for failure in report["failed"]:
        assert failure["reason"].startswith(f"the relations endpoint {proxy.url} (model '{tiny_vlm_dir}') "
                                            "failed after 3 attempt(s): APIConnectionError"), failure["reason"]


def prepare_pairs(sample) -> dict[str, dict]:
    return {relation_key(p["image_id"], p["subject"], p["object"]): p
            for p in prepare_data_for_inference(*sample, 10).pairs}


def local_descriptions(vlm, sample, keys: list[str]) -> dict[str, list[str]]:
    """The local engine's greedy descriptions of the pairs ``keys`` (at most 8 tokens)."""
    from workers.relations.generator import RelationGenerator

    processor, model = vlm
    generator = RelationGenerator(processor, model, max_new_tokens=8, temperature=0)
    pairs = prepare_pairs(sample)
    by_image: dict[str, list[str]] = {}
    for key in keys:
        by_image.setdefault(pairs[key]["image_path"], []).append(key)
    out = {}
    for path, image_keys in by_image.items():
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        prompts = [build_relation_prompt(pairs[k]["subject_obj"], pairs[k]["object_obj"], entry["predicate"],
                                         image.width, image.height)
                   for k in image_keys for entry in pairs[k]["stage1_top_k"]]
        texts = iter(generator.generate(image, prompts, seed=0))
        for k in image_keys:
            out[k] = [next(texts) for _ in pairs[k]["stage1_top_k"]]
    return out


def completion(content, finish_reason: str | None) -> Reply:
    return Reply(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": content},
                                               "finish_reason": finish_reason}]}).encode())


ANSWERS = {
    "stop": (completion(" on the table ", "stop"), ("on the table", None, False)),
    "length": (completion("on the", "length"), ("on the", None, True)),
    "empty": (completion("", "stop"), (None, "sent an empty description (finish_reason 'stop')", False)),
    "filtered": (completion(None, "content_filter"), (None, "refused to describe it", False)),
}


def test_each_prompt_is_one_chat_completion_and_its_answer_is_checked(proxies, sample) -> None:
    # The proxy answers every request itself: what a server sends back, and what was asked.
    proxy = proxies([reply for reply, _ in ANSWERS.values()])
    client = EndpointClient(proxy.url.replace("http://", "http://u:pw-31c9@"), "served-vlm",
                            what="the relations endpoint", setting="RELATIONS_ENDPOINT", api_key_env="",
                            concurrency=1, timeout_seconds=30, max_retries=0)
    relations = EndpointRelations(client, max_new_tokens=8, temperature=0.1)
    stage1, input_path = sample
    image_path = str(input_path.parent / "images" / "2343729.png")
    prompts = [f"prompt {i}: 这是一张图 <|object_ref_start|>" for i in range(len(ANSWERS))]
    answers = {}
    relations.describe([image_path], [prompts], [[11, 12, 13, 14]],
                       lambda image, index, answer: answers.__setitem__(index, answer))
    for index, (name, (_, (text, failure, truncated))) in enumerate(ANSWERS.items()):
        answer = answers[index]
        assert (answer.text, answer.truncated) == (text, truncated), name
        if failure is None:
            assert answer.failure is None, name
        else:
            assert answer.failure.startswith(f"the relations endpoint {proxy.url.replace('http://', 'http://u:**@')} "
                                             f"(model 'served-vlm') {failure}"), answer.failure
            assert "its first bytes: b'{\"choices\"" in answer.failure and "pw-31c9" not in answer.failure
    # One request per prompt, in order: the image first, as the file's own bytes, then the prompt as it is.
    with open(image_path, "rb") as f:
        original = f.read()
    for index, body in enumerate(proxy.bodies):
        request = json.loads(body)
        assert (request["model"], request["max_tokens"], request["temperature"], request["seed"]) == \
               ("served-vlm", 8, 0.1, 11 + index)
        [turn] = request["messages"]
        image, text = turn["content"]
        assert image["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(original).decode()
        assert text == {"type": "text", "text": prompts[index]}
