"""The fleet on 1 GPU, then on N: a real redis-server and the product's launcher
(``python -m workers launch --gpus <ids>``, one worker per GPU, concurrency 1), one shared queue.

Before the timed run, warm-up rounds run until every worker has run a big-image task and a
small-image task (its model loaded, the decode graphs of every batch shape captured): a round
has N tasks of a big image first, then N of a small one. It is *verified*: the done records of
the warm-up runs name the worker process (``host:pid``), the heartbeat hash ``evalfleet:workers``
names that process's Celery node (``gpuK@host``); a worker that has not run both sizes gets
another round (at most 6). Timed: enqueue -> every item done; ``generate_s_total`` sums the
workers' generation seconds, so a lost speedup shows as more GPU work (vs 1 GPU) or as idle
workers. A worker's finish time is when the producer first saw the last of its results (the
store is polled every 50 ms); tail = last worker finish - first.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator

from bench.harness import (Fleet, Texts, embedded_store, local_fleet, relations_texts, time_relations_run,
                           wait_for_workers)
from bench.relations_workload import CHUNK_PAIRS, image_size, write_workload
from config import Settings
from shared.messages import RELATIONS_STAGE, RELATIONS_TASK
from shared.store import WORKERS_KEY, RunStore

log = logging.getLogger("bench.scaling")

WARMUP_ROUNDS = 6
POLL_S = 0.05


def fleets(args: argparse.Namespace, model_dir: Path, work: Path, gpus: list[str],
           data: tuple[Path, Path]) -> Iterator[tuple[int, dict[str, Any], Texts]]:
    """The fleet on the first GPU, then on all, in one embedded Redis (fresh each call): for each
    GPU count, its entry and texts."""
    fleet_dir = work / "scaling-fleet"
    shutil.rmtree(fleet_dir, ignore_errors=True)
    with embedded_store(fleet_settings(args, model_dir, fleet_dir)) as (settings, client):
        for count in sorted({1, len(gpus)}):
            warm = write_warmup_data(work / f"scaling-warmup-{count}", count, args)
            yield count, *run_fleet(settings, client, gpus[:count], data, warm)


def fleet_settings(args: argparse.Namespace, model_dir: Path, work: Path) -> Settings:
    return Settings(work_dir=work, relations_model=str(model_dir), model_cache=str(work.parent / "models"),
                    temperature=0.0, max_new_tokens=args.max_new_tokens, batch_size=args.fleet_batch_size,
                    workers_per_gpu=1, poll_interval_seconds=POLL_S)


def write_warmup_data(directory: Path, workers: int, args: argparse.Namespace) -> tuple[Path, Path]:
    """``workers`` big-image tasks (batch 64 and the remainder buckets), then as many small ones."""
    shutil.rmtree(directory, ignore_errors=True)
    big = min(args.big_pairs, CHUNK_PAIRS)
    return write_workload(directory, [big] * workers + [args.small_pairs] * workers,
                          image_size(args.tiny), seed=13)


def run_fleet(settings: Settings, client, gpus: list[str], data: tuple[Path, Path],
              warm: tuple[Path, Path]) -> tuple[dict[str, Any], Texts]:
    """Boot the launcher on ``gpus``, warm every worker up, then time the whole workload."""
    prefix = f"g{len(gpus)}-"
    log_path = settings.work_dir / f"workers-{len(gpus)}gpu.log"
    boot = time.perf_counter()
    with local_fleet(settings, client, [settings.queue_relations], ",".join(gpus), log_path, prefix) as fleet:
        nodes = wait_for_workers(fleet, len(gpus), prefix)
        boot_s = time.perf_counter() - boot
        warmup = warm_up(fleet, nodes, prefix, warm)
        before = tasks_per_node(fleet, prefix)
        warmup["celery_tasks_per_node"] = before  # Celery's own count: a second check
        start = time.perf_counter()
        watcher = DoneWatcher(RunStore(client, f"{prefix}timed"), start)  # the run id is its name
        timed = time_relations_run(fleet, data, f"{prefix}timed", watcher.poll)
        watcher.poll()
        seconds = time.perf_counter() - start
        after = tasks_per_node(fleet, prefix)
    store = RunStore(client, timed.run_id)
    texts = relations_texts(client, timed.run_id)
    rows = per_worker(nodes, done_by_node(client, timed.run_id), watcher.seen,
                      {n: after.get(n, 0) - before.get(n, 0) for n in nodes})
    finishes = [r["finish_s"] for r in rows]
    entry = {
        "gpus": gpus, "workers": nodes, "boot_s_not_timed": round(boot_s, 2), "warmup": warmup,
        "seconds": round(seconds, 3), "descriptions": len(texts),
        "desc_per_s": round(len(texts) / seconds, 3), "tasks": timed.tasks_sent,
        "devices_used": len(store.devices()), "per_gpu": rows,
        "generate_s_total": round(sum(r["generate_s"] for r in rows), 2),
        "tail_s": round(max(finishes) - min(finishes), 2), "worker_log": str(log_path),
        "finish_note": f"finish_s: when the producer first saw the worker's last result (polled every "
                       f"{POLL_S}s), from the enqueue",
    }
    return entry, texts


class DoneWatcher:
    """When the producer first saw each item done, in seconds after ``start``."""

    def __init__(self, store: RunStore, start: float):
        self.store, self.start = store, start
        self.seen: dict[str, float] = {}

    def poll(self) -> None:
        keys = self.store.done_keys(RELATIONS_STAGE)
        now = time.perf_counter() - self.start
        for key in keys - self.seen.keys():
            self.seen[key] = now


def tasks_per_node(fleet: Fleet, prefix: str) -> dict[str, int]:
    """Celery's own count of the relations tasks each worker has run since it started."""
    stats = fleet.app.control.inspect(timeout=1).stats() or {}
    return {name: s["total"].get(RELATIONS_TASK, 0) for name, s in stats.items() if name.startswith(prefix)}


def done_by_node(client, run_id: str) -> dict[str, dict[str, dict]]:
    """node -> {key: done record}: the record names the worker process, its heartbeat the node."""
    nodes = {proc: json.loads(raw).get("node") for proc, raw in client.hgetall(WORKERS_KEY).items()}
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for key, record in RunStore(client, run_id).done(RELATIONS_STAGE).items():
        out[nodes.get(record["worker"]) or record["worker"]][key] = record
    return out


def warm_up(fleet: Fleet, nodes: list[str], prefix: str, warm: tuple[Path, Path]) -> dict[str, Any]:
    """Warm-up rounds until every node has run a task of each size in the warm-up data (a big
    image and a small one; verified): between them they use every batch shape of the timed run,
    so no worker captures a CUDA graph while timed. On 2 H200s (2026-11-30) one node got only a
    big task in its one round and captured its small-batch graph in the timed run."""
    start = time.perf_counter()
    items: dict[str, int] = defaultdict(int)
    sizes: dict[str, set[int]] = defaultdict(set)  # node -> pairs of the tasks it ran
    for rounds in range(1, WARMUP_ROUNDS + 1):
        run = time_relations_run(fleet, warm, f"{prefix}warmup{rounds}")
        for node, records in done_by_node(fleet.client, run.run_id).items():
            items[node] += len(records)
            sizes[node] |= task_sizes(records)
        needed = set().union(*sizes.values())
        missing = {n: sorted(needed - sizes[n]) for n in nodes if needed - sizes[n]}
        if not missing:
            break
        log.warning("warm-up round %d: task sizes (pairs) not run yet: %s; another round", rounds, missing)
    return {"rounds": rounds, "seconds_includes_model_load": round(time.perf_counter() - start, 2),
            "warmup_pairs_per_node": dict(items),
            "task_sizes_per_node": {n: sorted(sizes[n]) for n in nodes},
            "every_worker_warmed": not missing, "workers_not_fully_warmed": missing,
            "how": "warm-up runs (N big-image tasks first, then N small) until the done records "
                   "(worker process) mapped through the heartbeat hash (Celery node) show every node "
                   "running a task of each size"}


def task_sizes(records: dict[str, dict]) -> set[int]:
    """The pair counts of the tasks behind these done records (a warm-up task is one image)."""
    return set(Counter(r["image_id"] for r in records.values()).values())


def gpu_of(node: str) -> str:
    match = re.search(r"gpu([^@]+)@", node)
    return match.group(1) if match else node


def per_worker(nodes: list[str], by_node: dict[str, dict[str, dict]], seen: dict[str, float],
               tasks: dict[str, int]) -> list[dict[str, Any]]:
    rows = []
    for node in nodes:
        records = by_node.get(node, {})
        rows.append({
            "node": node, "gpu": gpu_of(node), "tasks": tasks.get(node),
            "pairs": len(records),
            "descriptions": sum(len(r["stage2_generated"]) for r in records.values()),
            "generate_s": round(sum(r["seconds"] for r in records.values()), 2),
            # A worker that got nothing was idle from the start: it finished at 0.
            "finish_s": round(max((seen[k] for k in records), default=0.0), 2),
        })
    return rows
