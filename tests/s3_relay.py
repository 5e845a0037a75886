"""A TCP relay in front of the tests' S3 server (tests/seaweedfs.py) that acts out what a fleet on
hosts that share no filesystem meets: an upload cut off mid-way (the request's head and the first
bytes of its body reach the store, the rest is kept back until the test drops the connection),
and the store going away (every connection dropped, new ones refused).

Bytes pass unchanged, so a client's signature (made for the relay's address) checks at the store.
A held request is recognised by its start (``PUT /bucket/prefix``) within one read of its
connection: a client writes a request's head in one write, and the loopback delivers it whole.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit

# Bytes of a held upload's body that reach the store before the rest is kept back.
BODY_BYTES_THROUGH = 16


class StoreRelay:
    def __init__(self, upstream: str, hold: bytes = b"", let_through: int = 0):
        """Relay to the store at ``upstream`` (its endpoint URL). ``hold``: the start of the
        request to hold mid-upload (``b"PUT /bucket/runs/r/edited/"``), the first one after
        ``let_through`` such requests went through; later ones go through too."""
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.hold, self.let_through = hold, let_through
        self.holding = threading.Event()  # set once an upload is held mid-way
        self._matched = 0
        self._held: tuple[socket.socket, socket.socket] | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> StoreRelay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def drop_held(self) -> None:
        """End the held upload's connections: the store has its head and part of its body only."""
        assert self._held is not None, "no upload is held"
        for sock in self._held:
            _close(sock)

    def stop(self) -> None:
        """The store goes away: connections dropped (the held one too), new ones refused."""
        _close(self._listener)
        with self._lock:
            for sock in self._sockets:
                _close(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # stopped
            try:
                store = socket.create_connection(self.upstream)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._sockets += [client, store]
            threading.Thread(target=self._requests, args=(client, store), daemon=True).start()
            threading.Thread(target=_pipe, args=(store, client), daemon=True).start()

    def _requests(self, client: socket.socket, store: socket.socket) -> None:
        """Client to store, holding the chosen upload: its head and BODY_BYTES_THROUGH bytes go
        through, the rest is read and kept back."""
        through: int | None = None  # while holding: how many more body bytes may go through
        try:
            while data := client.recv(65536):
                if through is None:
                    start = data.find(self.hold) if self.hold else -1
                    if start < 0 or not self._hold_this_one(client, store):
                        store.sendall(data)
                        continue
                    head_end = data.find(b"\r\n\r\n", start)
                    body = head_end + 4 if head_end >= 0 else len(data)
                    store.sendall(data[:body])
                    data, through = data[body:], BODY_BYTES_THROUGH
                store.sendall(data[:through])
                data, through = data[through:], through - len(data[:through])
                if data:  # part of the body is kept back: the upload is mid-way at the store
                    self.holding.set()
        except OSError:
            pass
        finally:
            _close(client)
            _close(store)

    def _hold_this_one(self, client: socket.socket, store: socket.socket) -> bool:
        with self._lock:
            self._matched += 1
            if self._matched != self.let_through + 1:
                return False
            self._held = (client, store)
            return True


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        _close(source)
        _close(target)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
