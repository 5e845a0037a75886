"""``python -m producer status``: what the fleet is doing, for people (a table) and scripts (JSON).

Three sources, each read as it is, nothing estimated that is not measured:

- queue depths: the broker's Redis lists (``producer/kombu_redis.py``): a queue's depth is the
  sum over its priority steps' lists; messages a worker has taken but not yet acknowledged
  (running or prefetched) are counted as ``reserved``;
- run progress, in pairs: the run store's done/failed/items hashes; in flight, the unfinished
  pairs of the tasks workers have taken (the unacknowledged messages); for the rate and the ETA
  (``producer/rate.py``), the samples the workers push as pairs end and after each task
  (``evalfleet:<run>:<stage>:samples``, Redis time);
- workers: Celery's remote control (``inspect``), which only live workers answer, joined
  with the heartbeats the worker processes write after each model acquire
  (``evalfleet:workers``) to show which models each process holds.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from celery import Celery
from kombu.utils.url import maybe_sanitize_url

from config import Settings
from config.celery import celery_config
from producer.jobs import JOBS
from producer.kombu_redis import queue_depths, task_args, unacked_messages
from producer.rate import duration, per_minute, rate_and_eta
from shared.messages import STAGE_OF_TASK
from shared.store import RUNS_KEY, WORKERS_KEY, RunStore

STAGES = tuple(stage for job in JOBS.values() for stage in job.stages)

# A heartbeat older than this, of a process no live worker lists, is ignored.
STALE_SECONDS = 600.0
# Heartbeats older than this are deleted: every process ever started leaves one.
FORGET_SECONDS = 86400.0


# --- runs --------------------------------------------------------------------------


def taken_keys(broker: redis.Redis) -> dict[tuple[str, str], set[str]]:
    """(run, stage) -> the item keys of the tasks workers have taken and not yet acknowledged."""
    taken: dict[tuple[str, str], set[str]] = {}
    for message, _ in unacked_messages(broker):
        stage = STAGE_OF_TASK.get(message.get("headers", {}).get("task"))
        args = task_args(message)
        if stage and args and len(args) > 1 and isinstance(args[1], list):
            taken.setdefault((str(args[0]), stage), set()).update(str(k) for k in args[1])
    return taken


def run_status(client: redis.Redis, run_id: str, now: float,
               taken: dict[tuple[str, str], set[str]] | None = None) -> dict[str, Any]:
    """The run's stages in pairs: done, failed, in flight (in a task a worker has taken),
    total, with the rate and the ETA."""
    store = RunStore(client, run_id)
    meta = store.meta() if store.exists() else {}
    stages = []
    for stage in STAGES:
        progress = store.progress(stage)
        if progress.total == 0:
            continue
        samples = store.progress_samples(stage)
        remaining = progress.total - progress.done - progress.failed
        in_flight = store.unfinished(stage, sorted((taken or {}).get((run_id, stage), ())))
        stages.append({"stage": stage, "done": progress.done, "failed": progress.failed,
                       "in_flight": len(in_flight), "total": progress.total,
                       **rate_and_eta(samples, remaining, now)})
    status = {"run": run_id, "job": meta.get("job"), "created": meta.get("created"), "stages": stages}
    job = JOBS.get(meta.get("job"))
    return {**status, **job.status(store, meta, stages, now)} if job else status


def runs_status(client: redis.Redis, run: str | None, now: float,
                taken: dict[tuple[str, str], set[str]] | None = None) -> list[dict[str, Any]]:
    """The given run, or every run in ``evalfleet:runs``, oldest first."""
    if run is not None:
        if not RunStore(client, run).exists():
            raise LookupError(f"run {run!r} is not registered in this Redis")
        run_ids = [run]
    else:
        run_ids = sorted(client.smembers(RUNS_KEY))
    runs = [run_status(client, run_id, now, taken) for run_id in run_ids]
    return sorted(runs, key=lambda r: (r["created"] or 0, r["run"]))


# --- workers -----------------------------------------------------------------------


def workers_online(app: Celery, timeout: float) -> list[dict[str, Any]]:
    """The workers that answer Celery's remote control within ``timeout`` seconds each."""
    queues = app.control.inspect(timeout=timeout).active_queues() or {}
    # Now that we know who is there, the next questions return as soon as all have answered.
    known = app.control.inspect(timeout=timeout, limit=len(queues) or None)
    stats = known.stats() or {}
    active = known.active() or {}
    workers = []
    for name in sorted(set(queues) | set(stats)):
        node_stats = stats.get(name, {})
        pool = node_stats.get("pool", {})
        workers.append({
            "name": name,
            "queues": sorted(q["name"] for q in queues.get(name, [])),
            "pid": node_stats.get("pid"),
            "concurrency": pool.get("max-concurrency"),
            "pool_pids": pool.get("processes"),
            "active": len(active.get(name, [])),
            # Celery's "total": tasks this worker accepted since it started, per task name.
            "processed": node_stats.get("total", {}),
            "processes": [],
        })
    return workers


def read_heartbeats(client: redis.Redis, now: float) -> dict[str, dict[str, Any]]:
    """``host:pid`` -> heartbeat; forgets (deletes) those older than FORGET_SECONDS."""
    beats, forgotten = {}, []
    for field, raw in client.hgetall(WORKERS_KEY).items():
        try:
            beat = json.loads(raw)
            age = now - float(beat["at"])
        except (ValueError, KeyError, TypeError):
            forgotten.append(field)
            continue
        if age > FORGET_SECONDS:
            forgotten.append(field)
        else:
            beats[field] = {**beat, "age": round(age, 1)}
    if forgotten:
        client.hdel(WORKERS_KEY, *forgotten)
    return beats


def attach_heartbeats(workers: list[dict[str, Any]], beats: dict[str, dict[str, Any]]) -> None:
    """Add each live worker's processes and their resident models.

    A heartbeat counts when its worker is online and lists its pid among the pool's
    processes (a replaced child's heartbeat is dropped), or, when the worker did not
    report its processes, when it is younger than STALE_SECONDS.
    """
    by_name = {w["name"]: w for w in workers}
    for field, beat in sorted(beats.items()):
        worker = by_name.get(beat.get("node"))
        if worker is None:
            continue
        pid = int(field.rsplit(":", 1)[1])
        alive = pid in worker["pool_pids"] if worker["pool_pids"] is not None else beat["age"] < STALE_SECONDS
        if alive:
            worker["processes"].append({"process": field, "resident": beat.get("resident", []),
                                        "device": beat.get("device"), "seen_ago": beat["age"]})


# --- the whole picture ---------------------------------------------------------------


def build_status(settings: Settings, app: Celery, run: str | None = None,
                 timeout: float = 1.0) -> dict[str, Any]:
    """Everything ``producer status`` shows, as plain data (what ``--json`` prints)."""
    broker = redis.Redis.from_url(settings.broker, decode_responses=True)
    store = redis.Redis.from_url(settings.store_url, decode_responses=True)
    now_s, now_us = store.time()
    now = now_s + now_us / 1e6  # the clock the workers' progress samples use
    queues = [queue for job in JOBS.values() for queue in job.queues(settings)]
    options = dict(celery_config(settings)["broker_transport_options"])
    status: dict[str, Any] = {
        "at": time.time(),
        "broker": maybe_sanitize_url(settings.broker),
        "queues": queue_depths(broker, queues, options),
        "runs": runs_status(store, run, now, taken_keys(broker)),
    }
    workers = workers_online(app, timeout)
    attach_heartbeats(workers, read_heartbeats(store, time.time()))
    status["workers"] = workers
    return status


# --- text --------------------------------------------------------------------------


def _eta(stage: dict[str, Any]) -> str:
    if stage["done"] + stage["failed"] >= stage["total"]:
        return "finished"
    return duration(stage["eta_seconds"])


def format_status(status: dict[str, Any]) -> str:
    """The status as a table for people."""
    lines = [f"broker {status['broker']}", "", f"{'queue':<12}{'waiting':>9}{'reserved':>10}"]
    for name, depth in status["queues"].items():
        lines.append(f"{name:<12}{depth['waiting']:>9}{depth['reserved']:>10}")
    speed = _speed_lines(status["runs"])
    lines += ["", _runs_table(status["runs"]), *([""] + speed if speed else []), "",
              *_workers_lines(status["workers"])]
    return "\n".join(lines)


def _runs_table(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "no runs"
    width = max(12, *(len(r["run"]) + 2 for r in runs))
    lines = [f"{'run':<{width}}{'stage':<11}{'done':>7}{'failed':>7}{'in flight':>10}{'total':>7}"
             f"{'pairs/min':>11}{'eta':>10}{'last':>10}"]
    for run in runs:
        if not run["stages"]:
            lines.append(f"{run['run']:<{width}}(no items)")
        for stage in run["stages"]:
            lines.append(f"{run['run']:<{width}}{stage['stage']:<11}{stage['done']:>7}{stage['failed']:>7}"
                         f"{stage['in_flight']:>10}{stage['total']:>7}{per_minute(stage['rate_per_min']):>11}"
                         f"{_eta(stage):>10}"
                         f"{duration(stage['last_progress_ago']):>10}")
    return "\n".join(lines)


def _speed_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Per editbench run: edit seconds per pair, GPU-seconds, each worker's time by activity."""
    lines = []
    for run in runs:
        speed = run.get("edit_speed")
        if not speed or not speed["edit_seconds"]["n"]:
            continue
        e, g = speed["edit_seconds"], speed["gpu_seconds"]
        modes = ", ".join(run.get("approximate") or []) or "exact"
        lines.append(f"{run['run']}: edit s/pair mean {e['mean']:.2f} p50 {e['p50']:.2f} p95 {e['p95']:.2f} "
                     f"({e['n']} edits, {modes}); GPU-s {g['run']:.0f} on {speed['gpus']} GPU(s), "
                     f"{g['per_pair'] if g['per_pair'] is not None else '-'} per pair")
        for worker, times in speed["workers"].items():
            shares = "  ".join(f"{k} {v:.0%}" for k, v in times["share"].items() if v is not None)
            lines.append(f"  {worker}: {shares}")
        if "step_cache" in speed:
            c = speed["step_cache"]
            lines.append(f"  step cache: {c['skipped_passes']} of {c['passes']} transformer passes skipped")
    return lines


def _workers_lines(workers: list[dict[str, Any]]) -> list[str]:
    if not workers:
        return ["no workers online (none answered the remote-control ping)"]
    lines = [f"workers online: {len(workers)}"]
    for w in workers:
        taken = sum(w["processed"].values())
        lines.append(f"  {w['name']}  queues {','.join(w['queues']) or '-'}  pid {w['pid']}  "
                     f"concurrency {w['concurrency']}  busy {w['active']}  tasks taken {taken}")
        for proc in w["processes"]:
            models = ", ".join(proc["resident"]) or "none"
            lines.append(f"      {proc['process']} on {proc['device']}: {models} "
                         f"(seen {duration(proc['seen_ago'])} ago)")
    return lines
