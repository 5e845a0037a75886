"""A real HTTP proxy (stdlib http.server on 127.0.0.1) in front of an OpenAI-compatible server,
that acts out a script on the first POSTs before it forwards the rest: answer a status (429 with
Retry-After, 503), send a body that is not a chat completion, or hold the request until the test
stops the proxy (a server that goes away mid-answer). What it did is kept for the test to read."""

from __future__ import annotations

import http.server
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

FORWARD = "forward"
HOLD = "hold"


@dataclass(frozen=True)
class Reply:
    """An answer the proxy makes up instead of forwarding."""

    status: int
    body: bytes = b'{"error": {"message": "busy"}}'
    headers: dict[str, str] = field(default_factory=dict)


class ScriptedProxy(http.server.ThreadingHTTPServer):
    """Acts out ``script`` (a Reply, FORWARD or HOLD per POST, in arrival order), then forwards."""

    daemon_threads = True  # a held request does not keep close() waiting

    def __init__(self, upstream: str, script: list):
        self.upstream, self.script = upstream, list(script)
        self.requests: list[float] = []  # when each POST arrived (time.monotonic())
        self.bodies: list[bytes] = []  # what each POST sent
        self.lock = threading.Lock()
        self.holding = threading.Event()  # set once a request is held
        self.stopped = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def act(self, body: bytes) -> object:
        with self.lock:
            self.requests.append(time.monotonic())
            self.bodies.append(body)
            return self.script[len(self.requests) - 1] if len(self.requests) <= len(self.script) else FORWARD

    def stop(self) -> None:
        """Go away: stop listening and drop the held requests unanswered."""
        self.stopped.set()
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        proxy: ScriptedProxy = self.server  # type: ignore[assignment]
        body = self.rfile.read(int(self.headers["Content-Length"]))
        act = proxy.act(body)
        if act == HOLD:
            proxy.holding.set()
            proxy.stopped.wait()
            self.close_connection = True  # dropped without an answer
            return
        if isinstance(act, Reply):
            self._reply(act.status, act.body, act.headers)
            return
        request = urllib.request.Request(proxy.upstream + self.path.removeprefix("/v1"), data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                self._reply(response.status, response.read(), {})
        except urllib.error.HTTPError as err:
            self._reply(err.code, err.read(), {})

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass
