"""The run store: run state and results in Redis, under idempotent item keys.

Layout, per run and stage (``evalfleet:<run>:<stage>:...``):

- ``items``  hash key -> item payload (JSON): everything the run must do;
- ``done``   hash key -> result (JSON), written with HSETNX: the first result wins,
  so a task executed twice (redelivered after a worker died) writes nothing new;
- ``failed`` hash key -> {"reason", "attempts"}: never set for a key that is done;
- ``stats``  hash of counters the workers increment (executions, generations).

``done + failed == total`` is what "finished" means: a queue can read empty while
a worker still holds a task.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from shared.disk import DiskFull
from shared.redaction import redact

PREFIX = "evalfleet"
RUNS_KEY = f"{PREFIX}:runs"
# Hash: worker process (host:pid) -> JSON heartbeat with the models it holds.
WORKERS_KEY = f"{PREFIX}:workers"
# Progress samples kept per run and stage (for the rate and ETA of ``producer status``).
SAMPLES_KEPT = 64
# What redis-py raises while Redis is unreachable (a restart, a failover): callers that
# can wait for it come back catch these, and only these.
OUTAGE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# The word Redis starts its error with when it refuses writes because it cannot write its
# files (its disk is full): "MISCONF Errors writing to the AOF file: No space left on device".
REFUSED_FOR_DISK = "MISCONF"

# Set the failure only if the key is not done; both checked inside Redis, atomically.
_MARK_FAILED = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class Progress:
    done: int
    failed: int
    total: int

    @property
    def finished(self) -> bool:
        return self.done + self.failed >= self.total


# How long a worker's store command waits for Redis to come back (a restart, a failover)
# before it raises: redis-py retries it with exponential back-off (0.1 s doubling to 5 s).
WORKER_OUTAGE_SECONDS = 60.0


def _outage_retry(seconds: float) -> Retry:
    """A redis-py Retry whose back-offs add up to about ``seconds``."""
    backoff = ExponentialBackoff(cap=5.0, base=0.1)
    total, retries = 0.0, 0
    while total < seconds:
        retries += 1
        total += backoff.compute(retries)
    return Retry(backoff, retries)


def connect(url: str, outage_seconds: float = 0.0) -> redis.Redis:
    """A Redis client for the store; text in and out (all values are JSON).

    With ``outage_seconds``, each command waits that long for an unreachable Redis
    (workers: a task rides out a restart without rerunning); without, redis-py's default
    applies (the producer has its own, longer wait).
    """
    extra = {"retry": _outage_retry(outage_seconds)} if outage_seconds else {}
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30, **extra)


def refuses_writes(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis refusing a write because it cannot write its files (MISCONF).

    redis-py has no class of its own for it: a plain ResponseError, with the word inside a
    pipeline's or a script's message.
    """
    return isinstance(exc, redis.exceptions.ResponseError) and REFUSED_FOR_DISK in str(exc)


def redis_data_dir(client: redis.Redis) -> str:
    """Where Redis keeps its files, as Redis tells it ("" where CONFIG is disabled, as on a
    managed Redis)."""
    try:
        return client.config_get("dir").get("dir") or ""
    except redis.exceptions.RedisError:
        return ""


def redis_disk_full(why: str, data_dir: str) -> DiskFull:
    """The DiskFull of a Redis that refuses writes: its data directory and Redis's own words."""
    why = why[why.find(REFUSED_FOR_DISK):] if REFUSED_FOR_DISK in why else why
    return DiskFull(f"Redis's data directory {data_dir}" if data_dir else "Redis's disk",
                    f"Redis refuses writes: {why}")


def check_redis_persisting(client: redis.Redis) -> None:
    """Raise DiskFull when Redis's last write of its append-only file failed: it refuses
    every write then (MISCONF), so no result can be stored until space is freed."""
    try:
        info = client.info("persistence")
    except (*OUTAGE_ERRORS, redis.exceptions.ResponseError):
        # Unreachable: the callers' waits have their own limit for that. INFO disabled (a
        # managed Redis): a refused write says MISCONF itself.
        return
    if info.get("aof_enabled") and info.get("aof_last_write_status") == "err":
        raise redis_disk_full("it cannot write its append-only file", redis_data_dir(client))


class RunStore:
    """Everything about one run that lives in Redis."""

    def __init__(self, client: redis.Redis, run_id: str):
        self.client = client
        self.run_id = run_id
        self._mark_failed = client.register_script(_MARK_FAILED)

    def _key(self, *parts: str) -> str:
        return ":".join((PREFIX, self.run_id, *parts))

    # --- the run ---------------------------------------------------------------
    def register(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        """Record the run's settings unless it has some, list the run; returns the stored settings.

        The caller compares them with its own (producer/run_identity.py): a run name
        never silently takes other settings.
        """
        self.client.hsetnx(self._key("meta"), "meta", _dumps(dict(meta)))
        self.client.sadd(RUNS_KEY, self.run_id)
        return self.meta()

    def update_meta(self, meta: Mapping[str, Any]) -> None:
        """Replace the stored settings (only with ones whose result-changing part is the same)."""
        self.client.hset(self._key("meta"), "meta", _dumps(dict(meta)))

    def delete(self) -> int:
        """Forget the run: its settings, items, results, failures and counters."""
        keys = list(self.client.scan_iter(match=self._key("*"), count=1000))
        if keys:
            self.client.delete(*keys)
        self.client.srem(RUNS_KEY, self.run_id)
        return len(keys)

    def meta(self) -> dict[str, Any]:
        raw = self.client.hget(self._key("meta"), "meta")
        if raw is None:
            raise LookupError(f"run {self.run_id!r} is not registered in this Redis")
        return json.loads(raw)

    def exists(self) -> bool:
        return bool(self.client.hexists(self._key("meta"), "meta"))

    # --- stage closing: the phase controller's word that no more tasks of a stage come ---
    def close_stage(self, stage: str) -> None:
        self.client.set(self._key(stage, "closed"), 1)

    def reopen_stage(self, stage: str) -> None:
        self.client.delete(self._key(stage, "closed"))

    def stage_closed(self, stage: str) -> bool:
        return bool(self.client.exists(self._key(stage, "closed")))

    # --- items -------------------------------------------------------------------
    def add_items(self, stage: str, items: Mapping[str, Mapping[str, Any]]) -> None:
        if items:
            self.client.hset(self._key(stage, "items"), mapping={k: _dumps(v) for k, v in items.items()})

    def items(self, stage: str) -> dict[str, dict[str, Any]]:
        return _load_all(self.client.hgetall(self._key(stage, "items")))

    def get_items(self, stage: str, keys: list[str]) -> list[dict[str, Any] | None]:
        if not keys:
            return []
        raw = self.client.hmget(self._key(stage, "items"), keys)
        return [None if r is None else json.loads(r) for r in raw]

    # --- outcomes ----------------------------------------------------------------
    def mark_done(self, stage: str, key: str, result: Mapping[str, Any]) -> bool:
        """Store the result unless one exists; returns whether this call stored it."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hsetnx(self._key(stage, "done"), key, _dumps(dict(result)))
        pipe.hdel(self._key(stage, "failed"), key)
        stored, _ = pipe.execute()
        return bool(stored)

    def mark_failed(self, stage: str, key: str, reason: str, attempts: int = 1) -> bool:
        """Record why an item failed, unless it is already done; the reason without the known
        secrets (shared/redaction.py), whoever wrote it."""
        record = _dumps({"reason": redact(reason), "attempts": attempts, "at": time.time()})
        keys = [self._key(stage, "done"), self._key(stage, "failed")]
        return bool(self._mark_failed(keys=keys, args=[key, record]))

    def clear_failed(self, stage: str, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:
            self.client.hdel(self._key(stage, "failed"), *keys)

    def done(self, stage: str) -> dict[str, dict[str, Any]]:
        return _load_all(self.client.hgetall(self._key(stage, "done")))

    def get_done(self, stage: str, keys: list[str]) -> list[dict[str, Any] | None]:
        if not keys:
            return []
        raw = self.client.hmget(self._key(stage, "done"), keys)
        return [None if r is None else json.loads(r) for r in raw]

    def done_keys(self, stage: str) -> set[str]:
        return set(self.client.hkeys(self._key(stage, "done")))

    def is_done(self, stage: str, keys: list[str]) -> list[bool]:
        if not keys:
            return []
        return [bool(x) for x in self.client.hmget(self._key(stage, "done"), keys)]

    def failed(self, stage: str) -> dict[str, dict[str, Any]]:
        return _load_all(self.client.hgetall(self._key(stage, "failed")))

    def unfinished(self, stage: str, keys: list[str] | None = None) -> list[str]:
        """The items of the stage (or of ``keys``) neither done nor failed."""
        keys = list(self.client.hkeys(self._key(stage, "items"))) if keys is None else keys
        if not keys:
            return []
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self._key(stage, "done"), keys)
        pipe.hmget(self._key(stage, "failed"), keys)
        done, failed = pipe.execute()
        return [k for k, d, f in zip(keys, done, failed) if d is None and f is None]

    def progress(self, stage: str, keys: list[str] | None = None) -> Progress:
        """Done, failed and total items of the stage, or of the given keys of it."""
        if keys is None:
            pipe = self.client.pipeline(transaction=False)
            for part in ("done", "failed", "items"):
                pipe.hlen(self._key(stage, part))
            done, failed, total = pipe.execute()
            return Progress(done=done, failed=failed, total=total)
        if not keys:
            return Progress(0, 0, 0)
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self._key(stage, "done"), keys)
        pipe.hmget(self._key(stage, "failed"), keys)
        done, failed = pipe.execute()
        n_done = sum(d is not None for d in done)
        n_failed = sum(d is None and f is not None for d, f in zip(done, failed))
        return Progress(done=n_done, failed=n_failed, total=len(keys))

    # --- progress samples (rate and ETA) ----------------------------------------------
    def add_progress_sample(self, stage: str) -> None:
        """Push [time, done, failed] onto the stage's capped sample list.

        The time is Redis's clock, the same for every worker host and for status.
        """
        seconds, micros = self.client.time()
        progress = self.progress(stage)
        key = self._key(stage, "samples")
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(key, json.dumps([seconds + micros / 1e6, progress.done, progress.failed]))
        pipe.ltrim(key, 0, SAMPLES_KEPT - 1)
        pipe.execute()

    def progress_samples(self, stage: str) -> list[list[float]]:
        """Newest first: [time, done, failed]."""
        return [json.loads(s) for s in self.client.lrange(self._key(stage, "samples"), 0, -1)]

    # --- worker-side counters ------------------------------------------------------
    def count(self, stage: str, name: str, amount: int = 1) -> None:
        self.client.hincrby(self._key(stage, "stats"), name, amount)

    def stats(self, stage: str) -> dict[str, int]:
        return {k: int(v) for k, v in self.client.hgetall(self._key(stage, "stats")).items()}

    def add_swap(self, swap: Mapping[str, Any]) -> None:
        self.client.rpush(self._key("swaps"), _dumps(dict(swap)))

    def swaps(self) -> list[dict[str, Any]]:
        return [json.loads(s) for s in self.client.lrange(self._key("swaps"), 0, -1)]

    def add_phase_time(self, phase: str, start: float, end: float) -> None:
        """Accumulate wall time per phase (a category-scoped run has one span per category)."""
        self.client.rpush(self._key("phases"), _dumps({"phase": phase, "start": start, "end": end}))

    def phase_times(self) -> list[dict[str, Any]]:
        return [json.loads(s) for s in self.client.lrange(self._key("phases"), 0, -1)]

    def add_device(self, device: str) -> None:
        """Remember which devices worked on the run (the report counts the GPUs)."""
        self.client.sadd(self._key("devices"), device)

    def devices(self) -> set[str]:
        return set(self.client.smembers(self._key("devices")))

    def add_worker_time(self, worker: str, activity: str, seconds: float) -> None:
        """Add to a worker's seconds of one activity in this run (editing, compiling,
        loading, scoring); the report counts the rest of the run's wall time as idle."""
        self.client.hincrbyfloat(self._key("worker_time"), f"{activity}:{worker}", seconds)

    def worker_times(self) -> dict[str, dict[str, float]]:
        """worker -> activity -> seconds."""
        out: dict[str, dict[str, float]] = {}
        for field, seconds in self.client.hgetall(self._key("worker_time")).items():
            activity, _, worker = field.partition(":")
            out.setdefault(worker, {})[activity] = float(seconds)
        return out

    def add_judge_experts(self, implementation: str) -> None:
        """Remember how the judge ran its experts ("grouped_mm", "eager", "dense"); the report shows it."""
        self.client.sadd(self._key("judge_experts"), implementation)

    def judge_experts(self) -> list[str]:
        return sorted(self.client.smembers(self._key("judge_experts")))


def _load_all(raw: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    return {k: json.loads(v) for k, v in raw.items()}
