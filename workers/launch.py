"""``python -m workers launch``: one Celery worker per GPU, pinned with CUDA_VISIBLE_DEVICES.

Each worker is a plain ``celery -A workers worker`` process with ``--concurrency``
= workers per GPU and a hostname naming its GPU (``gpu0@%h``). SIGTERM and SIGINT are
forwarded (Celery's warm shutdown: running tasks finish); if any worker dies, the
others are stopped and the launcher exits non-zero.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import psutil

from shared.processes import die_with_parent_hook

log = logging.getLogger(__name__)

CPU = "cpu"


@dataclass(frozen=True)
class WorkerSpec:
    gpu: str  # a CUDA device index, or "cpu"
    queues: tuple[str, ...]
    concurrency: int
    loglevel: str = "INFO"
    # Distinguishes several launchers on one host (Celery node names must be unique).
    prefix: str = ""

    @property
    def hostname(self) -> str:
        return f"{self.prefix}cpu@%h" if self.gpu == CPU else f"{self.prefix}gpu{self.gpu}@%h"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "workers", "worker",
                "-Q", ",".join(self.queues), "--concurrency", str(self.concurrency),
                "--pool", "prefork", "-n", self.hostname, "--loglevel", self.loglevel]

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        # An empty CUDA_VISIBLE_DEVICES hides every GPU from a CPU worker.
        env["CUDA_VISIBLE_DEVICES"] = "" if self.gpu == CPU else self.gpu
        return env


def visible_gpus() -> list[str]:
    """The GPU indices this launcher may hand out: CUDA_VISIBLE_DEVICES, else nvidia-smi's."""
    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        return [g.strip() for g in declared.split(",") if g.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                         capture_output=True, text=True, check=False)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def plan_workers(gpus: str, queues: list[str], workers_per_gpu: int, loglevel: str,
                 prefix: str = "") -> list[WorkerSpec]:
    """``gpus``: "all", "cpu", or a list like "0,1" (also fake indices on a CPU box, for tests)."""
    if gpus == CPU:
        chosen: list[str] = []
    elif gpus == "all":
        chosen = visible_gpus()
    else:
        chosen = [g.strip() for g in gpus.split(",") if g.strip()]
    slots = chosen or [CPU]
    return [WorkerSpec(g, tuple(queues), workers_per_gpu, loglevel, prefix) for g in slots]


def run_workers(specs: list[WorkerSpec], poll_seconds: float = 0.5) -> int:
    """Start the workers and babysit them until a signal or a death; returns the exit code."""
    # A launcher killed outright takes its workers along (Celery's cold shutdown: running
    # tasks stop, their unacknowledged messages are delivered again later).
    procs = [subprocess.Popen(spec.command(), env=spec.environ(),
                              preexec_fn=die_with_parent_hook(signal.SIGQUIT)) for spec in specs]
    for spec, proc in zip(specs, procs):
        log.info("started worker %s (pid %d) on queues %s", spec.hostname, proc.pid, ",".join(spec.queues))
    stopping = False

    def forward(signum, _frame):
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGQUIT, lambda *_: kill_now(procs))
    while True:
        codes = [proc.poll() for proc in procs]
        if all(code is not None for code in codes):
            return 0 if stopping else 1
        if not stopping and any(code is not None for code in codes):
            dead = [s.hostname for s, c in zip(specs, codes) if c is not None]
            log.error("worker %s exited; stopping the others", ", ".join(dead))
            forward(signal.SIGTERM, None)
            _wait_all(procs)
            return 1
        time.sleep(poll_seconds)


def kill_now(procs: list[subprocess.Popen]) -> None:
    """SIGQUIT: the one-command producer that started us died. Every worker process goes at
    once: a warm shutdown would finish (or wait forever on) running tasks nobody waits for,
    and Celery's cold shutdown hangs restoring messages to a Redis that died too. Their
    messages, never acknowledged, stay in Redis; the rerun enqueues the pending items again."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            tree = psutil.Process(proc.pid)
            for child in tree.children(recursive=True):
                child.kill()
            tree.kill()
    sys.exit(1)


def _wait_all(procs: list[subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
