"""Per-process worker state, created lazily in each prefork child (after the fork).

CUDA must not be initialized in the parent: the first task a child runs loads the
model, and the child keeps it for the tasks after.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from typing import Any

from shared.store import RunStore, connect
from workers.celery_app import settings

log = logging.getLogger(__name__)


@functools.cache
def _store_client():
    return connect(settings.store_url)


def run_store(run_id: str) -> RunStore:
    return RunStore(_store_client(), run_id)


@functools.cache
def _vlm(ref: str, revision: str) -> tuple[Any, Any]:
    from workers.models.loading import load_vlm, pick_device, pick_dtype, resolve_model_path

    device = pick_device(settings.device)
    path = resolve_model_path(ref, settings.models_dir)
    log.info("loading %s (revision %s) on %s", path, revision or "default", device)
    return load_vlm(path, revision=revision, dtype=pick_dtype(settings.dtype, device), device=device)


def relation_generator(meta: dict[str, Any]):
    """A generator with the run's settings over this process's copy of the run's model."""
    from workers.relation_generator import RelationGenerator

    processor, model = _vlm(meta["relations_model"], meta.get("model_revision", ""))
    return RelationGenerator(processor, model, batch_size=int(meta["batch_size"]),
                             max_new_tokens=int(meta["max_new_tokens"]),
                             temperature=float(meta["temperature"]))


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
