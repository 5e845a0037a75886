"""The endpoint judge against a real OpenAI-compatible server: the `transformers serve` command
on the tiny Qwen3-VL (CPU), and a real HTTP proxy in front of it that answers 429
or 503 first. The logprob path is read from responses in vLLM's documented format (files in
tests/data), since `transformers serve` returns no logprobs."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from conftest import private_env, read_json, run_producer, started_fleet
from endpoint_proxy import Reply, ScriptedProxy
from producer.editbench.sample import write_editbench_sample
from producer.embedded import EmbeddedRedis
from shared.editbench.judge_scores import JudgeFailure, JudgeScore
from shared.store import WORKERS_KEY, connect
from workers.judging.endpoint import EndpointJudge, score_from_response
from workers.judging.judge import JudgeItem

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def tiny_judge(tiny_vlm_dir) -> str:
    """The model the server serves, by the name the judge asks for: its directory."""
    return str(tiny_vlm_dir)


@pytest.fixture(scope="module")
def server(transformers_serve) -> str:
    return transformers_serve


@pytest.fixture
def proxy(server):
    """start(refuse, status) -> (URL, proxy) answering the first ``refuse`` POSTs with ``status``
    (and Retry-After: 1), then forwarding to the server."""
    started = []

    def start(refuse: int, status: int) -> tuple[str, ScriptedProxy]:
        p = ScriptedProxy(server, [Reply(status, headers={"Retry-After": "1"})] * refuse)
        started.append(p)
        return p.url, p

    yield start
    for p in started:
        p.stop()


def _judge(url: str, model: str, **changes) -> EndpointJudge:
    options = dict(api_key_env="", logprobs=True, values=tuple(range(11)), reasoning_tokens=0,
                   concurrency=2, timeout_seconds=60, max_retries=0)
    return EndpointJudge(url, model, **{**options, **changes})


def _row(edited: Image.Image | None = None) -> JudgeItem:
    original = Image.new("RGB", (96, 96), "beige")
    if edited is None:
        edited = original.copy()
        ImageDraw.Draw(edited).ellipse((10, 10, 80, 80), fill="red")
    return JudgeItem.of_pair(original, edited, system_prompt="You judge edits.",
                             user_prompt="Score the edit from 0 to 10. Answer with the integer only.")


def test_an_answer_without_a_score_fails_with_its_text(server, tiny_judge) -> None:
    # Both images reach the model (an image it cannot take is a 500, below); the tiny random
    # model answers, but states no score: each row fails with the answer attached. Never 0.
    results = _judge(server, tiny_judge).score([_row(), _row()])
    assert len(results) == 2
    for result in results:
        assert isinstance(result, JudgeFailure)
        assert result.reason.startswith("the judge's answer states no score from 0 to 10")
        assert "answer: '" in result.reason


def test_reasoning_mode_asks_for_its_budget_and_fails_an_answer_without_a_score(server, tiny_judge) -> None:
    judge = _judge(server, tiny_judge, reasoning_tokens=24, values=(1, 2, 3, 4, 5))
    assert judge.request(_row())["max_tokens"] == 24
    [result] = judge.score([_row()])
    assert isinstance(result, JudgeFailure) and "states no score from 1 to 5" in result.reason


def test_an_image_the_server_refuses_fails_alone_after_the_retries(server, tiny_judge) -> None:
    # The server's processor refuses a 4000x1 image (aspect ratio): an HTTP error (500 from
    # transformers 5.24, 400 from 5.25), and the row fails with it.
    good, refused = _judge(server, tiny_judge, max_retries=1).score([_row(), _row(Image.new("RGB", (4000, 1)))])
    assert isinstance(good, JudgeFailure) and "states no score" in good.reason
    assert isinstance(refused, JudgeFailure)
    assert re.search(r"failed after \d attempt\(s\): (InternalServerError|BadRequestError): Error code: (500|400)",
                     refused.reason), refused.reason


def test_429_with_retry_after_is_retried_by_the_client(proxy, tiny_judge) -> None:
    url, server = proxy(refuse=2, status=429)
    started = time.monotonic()
    [result] = _judge(url, tiny_judge, max_retries=3).score([_row()])
    # Three requests: two refused, the third answered by the model (which states no score).
    assert len(server.requests) == 3
    assert isinstance(result, JudgeFailure) and "states no score" in result.reason
    gaps = [b - a for a, b in zip(server.requests, server.requests[1:])]
    assert all(gap >= 0.95 for gap in gaps), gaps  # Retry-After: 1 honoured
    assert time.monotonic() - started >= 2


def test_a_server_that_stays_unavailable_fails_the_row_after_the_last_retry(proxy, tiny_judge) -> None:
    url, server = proxy(refuse=100, status=503)
    [result] = _judge(url, tiny_judge, max_retries=2).score([_row()])
    assert len(server.requests) == 3
    assert isinstance(result, JudgeFailure)
    assert "failed after 3 attempt(s): InternalServerError: Error code: 503" in result.reason


def test_the_api_key_comes_from_the_named_variable_and_is_required(monkeypatch, server, tiny_judge) -> None:
    monkeypatch.delenv("EVALFLEET_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(KeyError, match="EVALFLEET_TEST_JUDGE_KEY is not set"):
        _judge(server, tiny_judge, api_key_env="EVALFLEET_TEST_JUDGE_KEY")
    monkeypatch.setenv("EVALFLEET_TEST_JUDGE_KEY", "sk-secret-123")
    assert _judge(server, tiny_judge, api_key_env="EVALFLEET_TEST_JUDGE_KEY").completions.api_key == "sk-secret-123"


# --- the logprob path, on responses in vLLM's documented format ----------------------------------

def test_logprobs_give_the_expectation_over_the_scale_tokens() -> None:
    response = read_json(DATA / "vllm_chat_logprobs_score.json")
    result = score_from_response(response, tuple(range(11)), reasoning=False)
    assert isinstance(result, JudgeScore) and result.source == "logprobs"
    # Listed digits 7: 0.7, 8: 0.2, 6: 0.1, 5: 0.01 (no "1": no share of 10), renormalised.
    assert result.score == pytest.approx((7 * 0.7 + 8 * 0.2 + 6 * 0.1 + 5 * 0.01) / 1.01)
    assert result.probabilities["7"] == pytest.approx(0.7 / 1.01) and result.probabilities["10"] == 0


def test_a_stated_10_splits_the_1_with_the_next_position() -> None:
    response = read_json(DATA / "vllm_chat_logprobs_reasoning.json")
    result = score_from_response(response, tuple(range(11)), reasoning=True)
    # At "1": P(1)=0.8, P(9)=0.2; after it P("0")=0.75, so P(10)=0.6, P(1)=0.2.
    assert isinstance(result, JudgeScore) and result.source == "logprobs"
    assert result.probabilities["10"] == pytest.approx(0.6) and result.probabilities["1"] == pytest.approx(0.2)
    assert result.score == pytest.approx(8.0)
    assert result.rationale.startswith("The ball has rolled off the edge.")


def test_without_logprobs_the_stated_integer_is_the_score_and_says_so() -> None:
    response = read_json(DATA / "vllm_chat_logprobs_reasoning.json")
    response["choices"][0]["logprobs"] = None
    result = score_from_response(response, tuple(range(11)), reasoning=True)
    assert isinstance(result, JudgeScore) and (result.score, result.source) == (10.0, "answer")


# --- the score phase through the endpoint ---------------------------------------------------------

def test_score_phase_through_the_endpoint_loads_no_judge(server, tiny_judge, model_cache, tmp_path) -> None:
    benchmark = write_editbench_sample(tmp_path / "sample")
    cut = {name: pairs[:1] for name, pairs in json.loads(benchmark.read_text(encoding="utf-8")).items()}
    benchmark.write_text(json.dumps(cut, ensure_ascii=False), encoding="utf-8")
    output = tmp_path / "report.json"
    with EmbeddedRedis(tmp_path / "redis") as redis_server:
        env = private_env(redis_server, model_cache, tmp_path / "work", EVALFLEET_JUDGE_BACKEND="endpoint",
                          EVALFLEET_JUDGE_ENDPOINT_URL=server, EVALFLEET_JUDGE_ENDPOINT_MODEL=tiny_judge)
        with started_fleet(env, ["edit", "score"], tmp_path, name="endpoint"):
            proc = run_producer("run", "editbench", "--benchmark", str(benchmark), "--output", str(output),
                                env=env)
            resident = [json.loads(v)["resident"] for v in connect(redis_server.url).hgetall(WORKERS_KEY).values()]
    # Every pair reached the model and got an answer without a score: failed, with the answer.
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = read_json(output)
    assert report["rubric"]["backend"] == "endpoint" and report["run"]["judge_endpoint_url"] == server
    assert len(report["failures"]) == 5
    assert all(f["stage"] == "score" and "states no score" in f["reason"] for f in report["failures"])
    # The worker never loaded a judge model: it holds the editor only.
    assert resident and all(not any(name.startswith("vlm") for name in r) for r in resident)


def test_stated_scoring_takes_the_stated_integer_over_the_logprobs() -> None:
    response = read_json(DATA / "vllm_chat_logprobs_reasoning.json")
    # The expectation there is 8.0 (above); the answer states 10, which stated scoring takes.
    result = score_from_response(response, tuple(range(11)), reasoning=True, stated=True)
    assert isinstance(result, JudgeScore) and (result.score, result.source) == (10.0, "answer")
    assert result.probabilities["10"] == 1.0
