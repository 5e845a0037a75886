"""What an editbench run's edits cost: seconds per pair, GPU-seconds, each worker's time.

Read from what the workers stored: each edit's ``edit_seconds`` (the editor's call, of which
``compile_seconds`` compiling) and each worker's seconds per activity (editing, compiling,
loading, scoring). The run's wall time runs from its first phase's start to its last phase's
end (to now while it runs); whatever of it a worker did not spend on an activity was idle.
GPU-seconds are what the run held: its GPUs (the devices its workers reported) times its
wall time, so idle and loading GPUs count, as they do on a bill.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from shared.messages import EDIT_STAGE
from shared.store import RunStore

ACTIVITIES = ("editing", "compiling", "loading", "scoring")


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def edit_speed(store: RunStore, now: float | None = None) -> dict[str, Any]:
    """The run's edit timings, GPU-seconds and each worker's share of its wall time."""
    edited = store.done(EDIT_STAGE)
    seconds = [r["edit_seconds"] for r in edited.values() if isinstance(r.get("edit_seconds"), (int, float))]
    wall = run_wall_seconds(store, edited, now)
    gpus = sum("/cuda:" in device for device in store.devices())
    gpu_seconds = gpus * wall
    out: dict[str, Any] = {
        "edit_seconds": _summary(seconds),
        "compile_seconds": round(sum(r.get("compile_seconds", 0.0) for r in edited.values()), 3),
        "wall_seconds": round(wall, 3), "gpus": gpus,
        "gpu_seconds": {"run": round(gpu_seconds, 1),
                        "per_pair": round(gpu_seconds / len(edited), 2) if edited else None},
        "workers": _worker_shares(store.worker_times(), wall),
    }
    caches = [r["step_cache"] for r in edited.values() if isinstance(r.get("step_cache"), dict)]
    if caches:
        out["step_cache"] = {"passes": sum(c.get("passes", 0) for c in caches),
                             "skipped_passes": sum(c.get("skipped_passes", 0) for c in caches)}
    return out


def run_wall_seconds(store: RunStore, edited: dict[str, dict], now: float | None = None) -> float:
    """From the first phase's (or edit's) start to the last one's end, or to ``now`` (a run
    still going)."""
    spans = store.phase_times()
    starts = [s["start"] for s in spans] + [r["started_at"] for r in edited.values() if "started_at" in r]
    ends = [s["end"] for s in spans] + [r["finished_at"] for r in edited.values() if "finished_at" in r]
    if not starts:
        return 0.0
    end = now if now is not None else max(ends, default=min(starts))
    return max(0.0, end - min(starts))


def _summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "mean": None, "p50": None, "p95": None}
    return {"n": len(values), "mean": round(statistics.fmean(values), 3),
            "p50": round(percentile(values, 50), 3), "p95": round(percentile(values, 95), 3)}


def _worker_shares(times: dict[str, dict[str, float]], wall: float) -> dict[str, dict[str, Any]]:
    out = {}
    for worker, activities in sorted(times.items()):
        busy = {a: activities.get(a, 0.0) for a in ACTIVITIES}
        idle = max(0.0, wall - sum(busy.values()))
        seconds = {**busy, "idle": idle}
        out[worker] = {"seconds": {k: round(v, 3) for k, v in seconds.items()},
                       "share": {k: round(v / wall, 4) if wall > 0 else None for k, v in seconds.items()}}
    return out
