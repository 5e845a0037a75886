"""The endpoint judge against endpoints that misbehave: real HTTP servers on 127.0.0.1
(stdlib http.server) that trickle, refuse, echo secrets or answer something else than a chat
completion. Each row must fail alone, in bounded time, with a reason a user can act on."""

from __future__ import annotations

import http.server
import threading
import time
from typing import Callable

import pytest
from PIL import Image

from conftest import wait_until
from shared.editbench.judge_scores import JudgeFailure
from workers.judging.endpoint import EndpointJudge
from workers.judging.judge import JudgeItem

MODEL = "judge-under-test"


class _Endpoint(http.server.ThreadingHTTPServer):
    """Answers every POST with ``answer(handler)``; records the requests' paths and headers."""

    daemon_threads = True

    def __init__(self, answer: Callable[[http.server.BaseHTTPRequestHandler], None]):
        self.answer = answer
        self.requests: list[dict[str, str]] = []
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        endpoint: _Endpoint = self.server  # type: ignore[assignment]
        self.rfile.read(int(self.headers["Content-Length"]))
        endpoint.requests.append(dict(self.headers))
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
    return JudgeItem(original_image=image, edited_image=image, system_prompt="You judge edits.",
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
