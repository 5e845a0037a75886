"""A judge endpoint (stdlib http.server on 127.0.0.1) that holds every request until the test
releases it, then answers a chat completion scoring 7 (or the answer it is given), keeping each
request's body; and a one-command editbench run judged
by it: a run with a score task in flight for as long as a test needs, without racing a clock.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import psutil

from conftest import FAST, ROOT, command_line, one_pair_benchmark, wait_until
from producer.embedded import EmbeddedRedis
from shared.messages import EDIT_STAGE, SCORE_STAGE
from shared.store import RunStore, connect

RUN = "held"

MODEL = "held-judge"
def answer(text: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()


class HeldJudge(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, text: str = "7"):
        self.answer = answer(text)
        self.bodies: list[dict] = []  # every request, as JSON
        self.requests = 0
        self.received = threading.Event()  # a request arrived: a score task is running
        self.released = threading.Event()  # answer the held requests, and every later one at once
        self.closing = threading.Event()  # the test is over: drop what is still held
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def env(self) -> dict[str, str]:
        """The settings of a run judged here: no logprobs asked, a timeout far beyond any test."""
        return {"EVALFLEET_JUDGE_BACKEND": "endpoint", "EVALFLEET_JUDGE_ENDPOINT_URL": self.url,
                "EVALFLEET_JUDGE_ENDPOINT_MODEL": MODEL, "EVALFLEET_JUDGE_ENDPOINT_LOGPROBS": "false",
                "EVALFLEET_JUDGE_ENDPOINT_TIMEOUT_SECONDS": "3600"}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        judge: HeldJudge = self.server  # type: ignore[assignment]
        judge.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        judge.requests += 1
        judge.received.set()
        while not judge.released.wait(0.1):
            if judge.closing.is_set():
                return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client was killed
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(judge.answer)))
            self.end_headers()
            self.wfile.write(judge.answer)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def held_judge(text: str = "7") -> Iterator[HeldJudge]:
    judge = HeldJudge(text)
    threading.Thread(target=judge.serve_forever, daemon=True).start()
    try:
        yield judge
    finally:
        judge.closing.set()
        judge.shutdown()
        judge.server_close()


class OneCommandRun:
    """``python -m producer run editbench`` in a session of its own, as a terminal starts it:
    its process group is the one Ctrl-C signals."""

    def __init__(self, tmp_path: Path, model_cache: Path, judge: HeldJudge):
        self.work = tmp_path / "work"
        self.benchmark = one_pair_benchmark(tmp_path / "sample")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("EVALFLEET_")}
        self.env.update({**FAST, **judge.env(), "EVALFLEET_WORK_DIR": str(self.work),
                         "EVALFLEET_MODEL_CACHE": str(model_cache)})

    def start(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "producer", "run", "editbench", "--benchmark",
                                 str(self.benchmark), "--run", RUN], cwd=ROOT, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

    def log(self, name: str) -> str:
        path = self.work / "logs" / name
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def counts(self) -> tuple[int, int, int, int]:
        """(edits done, edits executed, scores done, scores executed), from the run's Redis data."""
        with EmbeddedRedis(self.work / "redis") as server:
            store = RunStore(connect(server.url), RUN)
            return (store.progress(EDIT_STAGE).done, store.stats(EDIT_STAGE).get("edits_executed", 0),
                    store.progress(SCORE_STAGE).done, store.stats(SCORE_STAGE).get("scores_executed", 0))


def in_flight(producer: subprocess.Popen, judge: HeldJudge) -> list[psutil.Process]:
    """Wait until a score task is running (its request reached the judge); the producer's
    children then: its redis-server, the launcher and the Celery worker processes."""
    wait_until(lambda: judge.received.is_set() or producer.poll() is not None, 300, "a score request")
    assert producer.poll() is None, producer.communicate()[0]
    children = psutil.Process(producer.pid).children(recursive=True)
    commands = " | ".join(command_line(p) for p in children)
    assert "redis-server" in commands and "workers launch" in commands and "celery" in commands, commands
    return children
