"""What the benchmarks share: a local fleet to time runs on (a real redis-server and real Celery
workers started through the product's launcher, or the same workers decoding with the slot
decoder, the baseline), quiet progress bars, and the memory bandwidths that timings are held
against.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from config import Settings, to_environ
from producer.dispatch import celery_client
from producer.embedded import EmbeddedRedis, LocalFleet
from producer.progress import wait_for_stage
from producer.relations.enqueue import enqueue_relations
from shared.messages import RELATIONS_STAGE
from shared.processes import die_with_parent_hook
from shared.store import RunStore, connect
from workers.launch import plan_workers

Texts = dict[tuple[str, str], str]  # (pair key, predicate) -> generated description


# --- a local fleet ----------------------------------------------------------------------------

@contextmanager
def embedded_store(settings: Settings, directory: Path | None = None) -> Iterator[tuple[Settings, Any]]:
    """A real redis-server for as long as the block runs (its data in ``directory``, by default
    the work directory's ``redis``): the settings pointed at it, and a client of it."""
    with EmbeddedRedis(directory or settings.work_dir / "redis") as server:
        yield settings.replace(broker_url=server.url), connect(server.url)


@dataclass
class Fleet:
    """Workers started by the product's launcher, and the clients the producer reaches them with."""

    settings: Settings
    client: Any  # the store's Redis client
    app: Any  # the Celery client
    workers: LocalFleet

    @property
    def log_path(self) -> Path:
        return self.workers.log_path

    def check(self) -> None:
        """Raise if the workers are gone (a wait would otherwise never end)."""
        self.workers.check()


@contextmanager
def local_fleet(settings: Settings, client, queues: list[str], gpus: str, log_path: Path | None = None,
                name_prefix: str = "") -> Iterator[Fleet]:
    """``python -m workers launch --gpus GPUS -Q QUEUES`` for as long as the block runs; on leaving
    it the workers shut down warm (running tasks finish, GPU memory is released)."""
    log_path = log_path or settings.work_dir / "workers.log"
    with LocalFleet(to_environ(settings), queues, log_path, gpus=gpus, name_prefix=name_prefix) as workers:
        yield Fleet(settings, client, celery_client(settings), workers)


class SlotWorkers(LocalFleet):
    """The workers the launcher would start, each with bench/slot_worker.py's app (the slot
    decoder) instead of the product's: what the benchmarks time the baseline with."""

    def __init__(self, env: dict[str, str], queues: list[str], log_path: Path, gpus: str,
                 workers_per_gpu: int, name_prefix: str = ""):
        super().__init__(env, queues, log_path, gpus=gpus, name_prefix=name_prefix)
        self.workers_per_gpu = workers_per_gpu

    def start(self) -> None:
        [spec] = plan_workers(self.gpus, self.queues, self.workers_per_gpu, "INFO", self.name_prefix)
        command = spec.command()
        command[command.index("-A") + 1] = "bench.slot_worker"
        env = {**self.env, "CUDA_VISIBLE_DEVICES": spec.environ()["CUDA_VISIBLE_DEVICES"]}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logfile:
            # A session of its own, so ``kill`` takes the worker's children along.
            self.proc = subprocess.Popen(command, env=env, stdout=logfile, stderr=subprocess.STDOUT,
                                         start_new_session=True,
                                         preexec_fn=die_with_parent_hook(signal.SIGQUIT))


@contextmanager
def slot_fleet(settings: Settings, client, queues: list[str], gpus: str, log_path: Path | None = None,
               name_prefix: str = "") -> Iterator[Fleet]:
    """``local_fleet`` whose workers decode with the slot decoder (one GPU, or the CPU)."""
    log_path = log_path or settings.work_dir / "workers.log"
    with SlotWorkers(to_environ(settings), queues, log_path, gpus, settings.workers_per_gpu,
                     name_prefix) as workers:
        yield Fleet(settings, client, celery_client(settings), workers)


def wait_for_workers(fleet: Fleet, count: int = 1, prefix: str = "", timeout: float = 300) -> list[str]:
    """The Celery node names once ``count`` workers named ``prefix...`` answer a ping: booted,
    no model loaded yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fleet.check()
        names = sorted(name for reply in fleet.app.control.ping(timeout=0.5) for name in reply
                       if name.startswith(prefix))
        if len(names) >= count:
            return names
    raise TimeoutError(f"{count} worker(s) named {prefix}* did not answer within {timeout}s; "
                       f"see {fleet.log_path}")


@dataclass(frozen=True)
class TimedRun:
    run_id: str
    pairs_sent: int
    tasks_sent: int
    enqueue_s: float  # registering the run and sending its tasks
    seconds: float  # from the enqueue to every item done (or failed)


def time_relations_run(fleet: Fleet, data: tuple[Path, Path], name: str,
                       on_poll: Callable[[], None] | None = None, allow_failures: bool = False) -> TimedRun:
    """Enqueue a relations run of ``data`` (stage-1 file, input file) named ``name`` and wait until
    every item is done, polling every ``poll_interval_seconds``; raise if an item failed, unless
    failures are what is measured."""
    settings = fleet.settings
    start = time.perf_counter()
    enqueued = enqueue_relations(settings, fleet.app, fleet.client, *data, name)
    sent = time.perf_counter()
    store = RunStore(fleet.client, enqueued.run_id)

    def check() -> None:
        fleet.check()
        if on_poll:
            on_poll()

    progress = wait_for_stage(store, RELATIONS_STAGE, settings.poll_interval_seconds, check)
    seconds = time.perf_counter() - start
    if progress.failed and not allow_failures:
        reasons = sorted({f["reason"] for f in store.failed(RELATIONS_STAGE).values()})
        raise RuntimeError(f"{name}: {progress.failed} items failed: {reasons[:3]}; see {fleet.log_path}")
    return TimedRun(enqueued.run_id, enqueued.pairs_sent, enqueued.tasks_sent, sent - start, seconds)


def relations_texts(client, run_id: str) -> Texts:
    """Every description a run generated, by pair and predicate."""
    done = RunStore(client, run_id).done(RELATIONS_STAGE)
    return {(key, g["predicate"]): g["generated_description"]
            for key, record in done.items() for g in record["stage2_generated"]}


def warm_then_timed(settings: Settings, data: tuple[Path, Path], warm_stage1: Path,
                    gpus: str = "0") -> tuple[Texts, float]:
    """A fresh fleet (its own Redis, one worker per GPU): a warm-up run of ``warm_stage1`` (the
    model loaded, its graphs captured), then the timed run of ``data``; its texts and seconds."""
    with embedded_store(settings) as (settings, client), \
            local_fleet(settings, client, [settings.queue_relations], gpus) as fleet:
        time_relations_run(fleet, (warm_stage1, data[1]), "warmup")
        timed = time_relations_run(fleet, data, "timed")
        return relations_texts(client, timed.run_id), timed.seconds


# --- output ------------------------------------------------------------------------------------

def quiet_progress_bars() -> None:
    """The producer's wait redraws its bar on every poll (50 ms here) and the models' loading bars
    bury the log: all off, here and in the processes started from here."""
    import diffusers
    import transformers

    import producer.progress

    producer.progress.tqdm = functools.partial(producer.progress.tqdm, disable=True)
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    os.environ["TQDM_DISABLE"] = "1"  # read by tqdm when a worker or shard process imports it


# --- bandwidth ---------------------------------------------------------------------------------

def synchronized_seconds(run: Callable[[], Any]) -> float:
    """Seconds of ``run`` with the GPU's queued work finished on both sides."""
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def pinned_bandwidth_gbs(nbytes: int = 4 << 30, reps: int = 5) -> dict[str, float]:
    """Copies between pinned host memory and the GPU, GB/s each way ("h2d", "d2h"): the best of
    ``reps`` copies of ``nbytes``, after one that is not timed."""
    import torch

    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dev.copy_(host, non_blocking=True)
    out = {}
    for name, (dst, src) in {"h2d": (dev, host), "d2h": (host, dev)}.items():
        seconds = min(synchronized_seconds(lambda: dst.copy_(src, non_blocking=True)) for _ in range(reps))
        out[name] = nbytes / seconds / 1e9
    del host, dev
    return out


def hbm_bandwidth_gbs() -> float:
    """Device-to-device copy, bytes read + written, GB/s."""
    import torch

    x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        y.copy_(x)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / 10
    del x, y
    return 2 * (2 << 30) / seconds / 1e9
