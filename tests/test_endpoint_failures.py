"""The endpoint judge against endpoints that misbehave: real HTTP servers on 127.0.0.1
(stdlib http.server) that trickle, refuse, echo secrets or answer something else than a chat
completion. Each row must fail alone, in bounded time, with a reason a user can act on."""

from __future__ import annotations

import base64
import email.message
import http.server
import io
import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

from config import SettingsError, load_settings
from conftest import FAST, one_pair_benchmark, read_json, run_producer, wait_until
from producer.embedded import EmbeddedRedis
from shared.editbench.data import decode_image_b64
from shared.editbench.judge_scores import JudgeFailure
from shared.errors import RecordError
from shared.redaction import redact_logs
from shared.store import RunStore, connect
from workers.errors import PermanentError
from workers.endpoints.client import endpoint_url
from workers.judging.endpoint import EndpointJudge
from workers.judging.judge import JudgeItem

MODEL = "judge-under-test"


class _Endpoint(http.server.ThreadingHTTPServer):
    """Answers every POST with ``answer(handler)``; records the requests' paths and headers."""

    daemon_threads = True

    def __init__(self, answer: Callable[[http.server.BaseHTTPRequestHandler], None]):
        self.answer = answer
        self.requests: list[email.message.Message] = []
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        endpoint: _Endpoint = self.server  # type: ignore[assignment]
        self.rfile.read(int(self.headers["Content-Length"]))
        endpoint.requests.append(self.headers)
        try:
            endpoint.answer(self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up: what the hang tests wait for

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def endpoint():
    """start(answer) -> the base URL of a new local endpoint, and the server."""
    started: list[_Endpoint] = []

    def start(answer) -> tuple[str, _Endpoint]:
        server = _Endpoint(answer)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1", server

    yield start
    for server in started:
        server.stopping.set()
        server.shutdown()
        server.server_close()


def _judge(url: str, **changes) -> EndpointJudge:
    options = dict(api_key_env="", logprobs=False, values=tuple(range(11)), reasoning_tokens=0,
                   concurrency=2, timeout_seconds=60, max_retries=0)
    return EndpointJudge(url, MODEL, **{**options, **changes})


def _row() -> JudgeItem:
    image = Image.new("RGB", (8, 8), "beige")
    return JudgeItem.of_pair(image, image, system_prompt="You judge edits.",
                             user_prompt="Score the edit from 0 to 10.")


def _request_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "judge-endpoint-request"]


# --- hangs: the timeout bounds the whole request ---------------------------------------------------

def _trickle(handler, first: bytes) -> None:
    """Send ``first``, then a byte every 0.2 s until the client leaves (never a whole answer)."""
    handler.wfile.write(first)
    handler.wfile.flush()
    while not handler.server.stopping.wait(0.2):
        handler.wfile.write(b" ")
        handler.wfile.flush()


def trickled_body(handler) -> None:
    _trickle(handler, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")


def trickled_headers(handler) -> None:
    _trickle(handler, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow: ")


@pytest.mark.parametrize("answer", [trickled_body, trickled_headers], ids=["body", "headers"])
def test_a_trickling_endpoint_times_out_as_a_whole_request_and_each_retry_too(endpoint, answer) -> None:
    url, server = endpoint(answer)
    started = time.monotonic()
    [result] = _judge(url, timeout_seconds=1, max_retries=1).score([_row()])
    elapsed = time.monotonic() - started
    # Bytes keep coming every 0.2 s, so no read ever times out: only a bound on the whole
    # request ends it. Two attempts of 1 s and a back-off; far less than 10x the timeout.
    assert isinstance(result, JudgeFailure)
    assert "failed after 2 attempt(s): no whole answer within 1 s" in result.reason, result.reason
    assert len(server.requests) == 2
    assert elapsed < 10, elapsed
    # The given-up requests' threads end too (their connections were closed): nothing leaks.
    wait_until(lambda: not _request_threads(), 30, "the abandoned requests' threads to end")


# --- secrets: whatever the server says, known secrets stay out -------------------------------------

def _reply(handler, status: int, body: bytes, content_type: str = "application/json") -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def echoed_credentials(handler) -> None:
    """401, with the credentials the client sent in the error message (some servers do)."""
    message = f"invalid api key: {handler.headers.get('Authorization')}"
    _reply(handler, 401, json.dumps({"error": {"message": message}}).encode())


def _files_text(folder: Path) -> str:
    return "".join(p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file())


def test_an_api_key_the_server_echoes_stays_out_of_reasons_redis_and_logs(endpoint, monkeypatch, tmp_path) -> None:
    key = "sk-echoed-4a7f0c2d9e"
    monkeypatch.setenv("JUDGE_TEST_API_KEY", key)
    url, server = endpoint(echoed_credentials)
    [result] = _judge(url, api_key_env="JUDGE_TEST_API_KEY", max_retries=3).score([_row()])
    assert server.requests[0].get("Authorization") == f"Bearer {key}"  # sent, and echoed back
    # A 401 is not retried: one attempt, counted as one.
    assert len(server.requests) == 1
    assert isinstance(result, JudgeFailure)
    assert "failed after 1 attempt(s): AuthenticationError" in result.reason and "Bearer **" in result.reason
    assert key not in result.reason
    # Whatever reason reaches the store is redacted there too, so the append-only file never has it.
    with EmbeddedRedis(tmp_path / "redis") as redis_server:
        store = RunStore(connect(redis_server.url), "run")
        store.mark_failed("score", "pair", f"a worker's own words: {key}")
        assert store.failed("score")["pair"]["reason"] == "a worker's own words: **"
    assert key not in _files_text(tmp_path / "redis")
    # And log lines, tracebacks included, through the filter the producer and the workers install.
    logger, out = logging.getLogger("test.redaction"), io.StringIO()
    logger.addHandler(logging.StreamHandler(out))
    redact_logs(logger)
    try:
        raise RuntimeError(f"the server said {key}")
    except RuntimeError:
        logger.exception("failed with %s", key)
    assert key not in out.getvalue() and "failed with **" in out.getvalue() and "the server said **" in out.getvalue()


def test_a_password_in_the_endpoint_url_stays_out_of_report_terminal_logs_and_redis(endpoint, model_cache,
                                                                                     tmp_path) -> None:
    url, server = endpoint(echoed_credentials)
    password = "url-pw-5be81d"
    secret_url = url.replace("http://", f"http://judge:{password}@")
    basic = base64.b64encode(f"judge:{password}".encode()).decode()
    work, output = tmp_path / "work", tmp_path / "report.json"
    env = {**FAST, "EVALFLEET_MODEL_CACHE": str(model_cache), "EVALFLEET_WORK_DIR": str(work),
           "EVALFLEET_JUDGE_BACKEND": "endpoint", "EVALFLEET_JUDGE_ENDPOINT_URL": secret_url,
           "EVALFLEET_JUDGE_ENDPOINT_MODEL": MODEL}
    proc = run_producer("run", "editbench", "--benchmark", str(one_pair_benchmark(tmp_path / "sample")),
                        "--output", str(output), env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # The workers used the password (as Basic credentials); the server echoed them back.
    assert server.requests and server.requests[0].get("Authorization") == f"Basic {basic}"
    report = read_json(output)
    [failure] = report["failures"]
    assert "failed after 1 attempt(s): AuthenticationError" in failure["reason"]
    assert "Basic **" in failure["reason"] and "judge:**@" in failure["reason"]
    assert report["run"]["judge_endpoint_url"] == url.replace("http://", "http://judge:**@")
    workers_log = (work / "logs" / "workers.log").read_text(encoding="utf-8")
    assert "HTTP Request: POST http://judge:**@" in workers_log  # the client's own log line, redacted
    everything = {"terminal": proc.stdout + proc.stderr, "report": output.read_text(encoding="utf-8"),
                  "logs": _files_text(work / "logs"), "redis": _files_text(work / "redis")}
    for where, text in everything.items():
        assert password not in text and basic not in text, where


def test_workers_take_the_endpoint_password_from_their_own_setting_or_say_to_set_it() -> None:
    stored = "http://judge:**@10.0.0.7:8000/v1"
    own = "http://judge:pw@10.0.0.7:8000/v1"
    assert endpoint_url(stored, own, "JUDGE_ENDPOINT") == own
    assert endpoint_url("http://10.0.0.7:8000/v1", "", "JUDGE_ENDPOINT") == "http://10.0.0.7:8000/v1"
    for own in ("", "http://judge:pw@10.0.0.8:8000/v1"):
        with pytest.raises(PermanentError, match="set EVALFLEET_JUDGE_ENDPOINT_URL to that URL with its password"):
            endpoint_url(stored, own, "JUDGE_ENDPOINT")


# --- a key put where the variable's name goes --------------------------------------------------------

KEYS = ["sk-proj-Q2w9ZkT4", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345", "4f3a9c2e1b7d8e6f4f3a9c2e1b7d8e6f",
        "gsk_8fJk2LmN9pQr", "ghp_abcdefghijklmnopqrstuvwxyz0123456789", "R8F2K9Q4M1X7Z3W5",
        "eyJhbGciOiJIUzI1NiJ9.e30.sig"]


@pytest.mark.parametrize("key", KEYS)
def test_a_key_in_the_variable_name_setting_is_refused_without_showing_it(key) -> None:
    with pytest.raises(SettingsError, match="NAME of the environment variable") as refused:
        load_settings({"EVALFLEET_JUDGE_ENDPOINT_API_KEY_ENV": key})
    assert key not in str(refused.value)
    # A run registered before the check: its workers refuse it the same way.
    with pytest.raises(KeyError) as refused:
        _judge("http://127.0.0.1:9/v1", api_key_env=key)
    assert key not in str(refused.value)


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "judge_api_key", "AZURE_OPENAI_API_KEY_2024"])
def test_variable_names_are_accepted(name) -> None:
    assert load_settings({"EVALFLEET_JUDGE_ENDPOINT_API_KEY_ENV": name}).judge_endpoint_api_key_env == name


def test_the_producer_exits_2_on_a_key_in_the_variable_name_setting_and_never_prints_it(tmp_path) -> None:
    key = KEYS[1]
    proc = run_producer("status", env={"EVALFLEET_JUDGE_ENDPOINT_API_KEY_ENV": key,
                                       "EVALFLEET_WORK_DIR": str(tmp_path / "work")})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "NAME of the environment variable" in proc.stderr
    assert key not in proc.stdout + proc.stderr


# --- failure reasons people can act on -------------------------------------------------------------

def test_a_retry_after_beyond_60_s_stops_after_one_request_and_says_so(endpoint) -> None:
    def answer(handler) -> None:
        body = b'{"error": {"message": "quota exhausted"}}'
        handler.send_response(429)
        handler.send_header("Retry-After", "3600")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    url, server = endpoint(answer)
    [result] = _judge(url, max_retries=3).score([_row()])
    assert len(server.requests) == 1
    assert isinstance(result, JudgeFailure)
    assert "failed after 1 attempt(s): RateLimitError" in result.reason
    assert "it asks to retry after 3600 s: more than 60 s, not waited for" in result.reason


# (what the server sends with status 200, its content type, its first bytes as the reason shows them)
NOT_COMPLETIONS = {
    "plain-text": (b"Score: 7", "text/plain", "b'Score: 7'"),
    "html": (b"<html><body>502 Bad Gateway</body></html>", "text/html", "b'<html><body>502"),
    "broken-json": (b'{"choices": [', "application/json", "b'{\"choices\": ['"),
    "another-api": (b'{"object": "list", "data": []}', "application/json", "b'{\"object\": \"list\""),
    "no-choices": (b'{"choices": []}', "application/json", "b'{\"choices\": []}'"),
    "overflowing-logprob": (b'{"choices": [{"message": {"content": "7"}, "logprobs": {"content": [{"token": "7", '
                            b'"logprob": -0.1, "top_logprobs": [{"token": "7", "logprob": 1' + b"0" * 400 + b"}]}]}}]}",
                            "application/json", "b'{\"choices\": [{\"message\""),
}


@pytest.mark.parametrize("case", NOT_COMPLETIONS, ids=list(NOT_COMPLETIONS))
def test_an_answer_that_is_not_a_chat_completion_fails_saying_so_with_where_and_what(endpoint, case) -> None:
    body, content_type, shown = NOT_COMPLETIONS[case]
    url, server = endpoint(lambda handler: _reply(handler, 200, body, content_type))
    [result] = _judge(url.replace("http://", "http://judge:pw-7c1e@"), logprobs=True, max_retries=2).score([_row()])
    assert len(server.requests) == 1  # an answer, if a wrong one: not retried
    assert isinstance(result, JudgeFailure)
    assert result.reason.startswith(f"the judge endpoint {url.replace('http://', 'http://judge:**@')} "
                                    f"(model '{MODEL}') sent something that is not a chat completion (")
    assert f"its first bytes: {shown}" in result.reason
    assert "pw-7c1e" not in result.reason


def test_base64_that_is_not_an_image_is_named_by_its_bytes_not_by_a_python_object(tmp_path) -> None:
    with pytest.raises(RecordError) as refused:
        decode_image_b64(base64.b64encode(b"hello, not an image").decode(), tmp_path / "bench.json", "cat|p#0")
    assert "<_io.BytesIO" not in str(refused.value)
    assert "not a readable image" in str(refused.value) and "the image's 19 bytes (starting b'hello, n')" in str(refused.value)
