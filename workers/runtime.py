"""Per-process worker state, created lazily in each prefork child (after the fork): the
store client, the residency pool and the way models become resident in it, the worker's names.

CUDA must not be initialized in the parent: the first task a child runs loads the
model, and the child keeps it for the tasks after. The model factories get this process
through ``model_host`` (the tasks hand it to them).

Two small records let ``python -m producer status`` show what the fleet is doing:

- a heartbeat after every model acquire: hash ``evalfleet:workers``, field
  ``<host>:<pid>`` -> {"resident": [...], "device", "node", "at"};
- a progress sample after every task: list ``evalfleet:<run>:<stage>:samples`` of
  [redis time, done, failed], newest first, capped, from which status derives a rate.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import redis
from celery import current_task

from shared.object_cache import ObjectCache
from shared.store import WORKER_OUTAGE_SECONDS, WORKERS_KEY, RunStore, connect
from workers.celery_app import settings
from workers.errors import PermanentError
from workers.model_host import Load, ModelHost

if TYPE_CHECKING:
    from workers.residency import ResidencyPool

log = logging.getLogger(__name__)


@functools.cache
def _store_client():
    return connect(settings.store_url, outage_seconds=WORKER_OUTAGE_SECONDS)


def run_store(run_id: str) -> RunStore:
    return RunStore(_store_client(), run_id)


@functools.cache
def object_cache() -> ObjectCache:
    """This host's copies of the objects its workers fetched (the processes share the folder)."""
    return ObjectCache(settings.object_cache, int(settings.object_cache_mb * 2**20))


@functools.cache
def residency() -> "ResidencyPool":
    """This process's pool: which of its models are on the device, within the memory budget."""
    from workers.models.loading import pick_device
    from workers.residency import ResidencyPool, default_budget_bytes

    device = pick_device(settings.device)
    budget = default_budget_bytes(device, settings.workers_per_gpu, settings.memory_budget_gb)
    log.info("residency pool on %s with a budget of %.2f GiB", device, budget / 2**30)
    return ResidencyPool(device, budget)


# Model name -> the load function of its latest caller. The pool calls it until a load
# succeeds, so a failed load reports the setting of the task that asked this time (the
# relations model and the judge may name the same model).
_loads: dict[str, Load] = {}


def _resident(store: RunStore, name: str, load: Load) -> Any:
    """The model ``name`` made resident (loading or swapping it in); swaps are recorded in the run."""
    pool = residency()
    if name not in _loads:
        loaded: dict[str, Any] = {}

        def loader() -> dict:
            loaded["handle"], modules = _loads[name]()
            return modules

        pool.register(name, loader, handle=lambda: loaded["handle"])
    _loads[name] = load
    before = len(pool.swaps)
    started = time.perf_counter()
    handle = _acquire(pool, name)
    seconds = time.perf_counter() - started
    if len(pool.swaps) > before or seconds > LOADING_SECONDS_COUNTED:
        store.add_worker_time(worker_name(), "loading", seconds)
    for swap in pool.swaps[before:]:
        store.add_swap({"worker": worker_name(), "from": swap.evicted, "to": swap.loaded,
                        "dropped": swap.dropped, "bytes": swap.bytes_moved,
                        "seconds": round(swap.seconds, 4), "at": time.time()})
    _heartbeat(pool)
    return handle


# Model name -> why it cannot be loaded, for the reasons that stay true (an editor of an
# unsupported family, a LoRA that does not fit it): every later item fails with the same
# reason at once instead of loading the base model again.
_unloadable: dict[str, str] = {}


# A model already resident is acquired in microseconds: only real loads and swaps count as
# the worker's loading time.
LOADING_SECONDS_COUNTED = 0.05


def _acquire(pool: "ResidencyPool", name: str) -> Any:
    from shared.editbench.editor_families import UnsupportedEditorError
    from workers.editing.approximate import ApproximateModeError
    from workers.editing.loras import LoraMismatchError
    from workers.models.loading import ModelNotFoundError
    from workers.residency import BudgetExceededError

    if name in _unloadable:
        raise PermanentError(_unloadable[name])
    try:
        return pool.acquire(name)
    except (UnsupportedEditorError, LoraMismatchError, ApproximateModeError) as exc:
        _unloadable[name] = str(exc)
        raise PermanentError(str(exc)) from exc
    except (ModelNotFoundError, BudgetExceededError) as exc:
        # A missing model stays missing and a too-large one never fits: retries only
        # delay the failure. The message names the setting to fix.
        raise PermanentError(str(exc)) from exc


def _heartbeat(pool: "ResidencyPool") -> None:
    """Tell ``producer status`` which models this process holds (never fails a task)."""
    request = current_task.request if current_task else None
    record = {"resident": pool.resident, "device": str(pool.device), "at": time.time(),
              "node": getattr(request, "hostname", None)}
    try:
        _store_client().hset(WORKERS_KEY, worker_name(), json.dumps(record))
    except redis.RedisError as exc:
        log.warning("could not write the worker heartbeat: %s", exc)


def model_host(store: RunStore) -> ModelHost:
    """What the model factories get from this process for the run of ``store``."""
    return ModelHost(store, settings, residency, functools.partial(_resident, store))


@functools.cache
def device_name() -> str:
    """host/device, e.g. ``gpu-7/cuda:GPU-3f2c...`` (so the report can count GPUs) or ``host/cpu``."""
    from workers.models.loading import pick_device

    device = pick_device(settings.device)
    if device.type == "cuda":
        import torch

        props = torch.cuda.get_device_properties(device)
        return f"{socket.gethostname()}/cuda:{getattr(props, 'uuid', device.index)}"
    return f"{socket.gethostname()}/cpu"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
