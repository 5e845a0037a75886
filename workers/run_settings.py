"""A run's result-changing settings as a worker reads them: from the run's record (what the
producer registered), never from the worker's own environment."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from shared.run_settings import RunSettings, RunSettingsError
from shared.store import RunStore
from workers.errors import PermanentError

if TYPE_CHECKING:
    import torch

S = TypeVar("S", bound=RunSettings)


def read_run_settings(store: RunStore, kind: type[S]) -> S:
    """The settings of the store's run, read once when a task opens the run.

    A run registered without one of them (by an older evalfleet), or with one of the wrong
    type, cannot be honoured: its items fail at once, saying how to go on.
    """
    try:
        return kind.from_record(store.meta(), store.run_id)
    except RunSettingsError as exc:
        raise PermanentError(str(exc)) from None


def run_dtype(run_id: str, name: str, device: "torch.device") -> "torch.dtype":
    """The torch dtype ``name`` that run ``run_id`` asked for, on this worker's ``device``;
    refused if the device lacks it."""
    import torch

    from workers.models.loading import pick_dtype

    try:
        dtype = pick_dtype(name, device)
    except ValueError as exc:
        raise PermanentError(f"run {run_id!r}: {exc}") from None
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PermanentError(f"run {run_id!r} asks for bfloat16, which {device} "
                             f"({torch.cuda.get_device_name(device)}) does not support: start it "
                             "over with EVALFLEET_DTYPE=float16 and --restart, or use other GPUs")
    return dtype
