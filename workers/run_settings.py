"""A run's result-changing settings as a worker reads them: from the run's record (what the
producer registered), never from the worker's own environment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.store import RunStore
from workers.errors import PermanentError

if TYPE_CHECKING:
    import torch


def run_setting(store: RunStore, meta: dict[str, Any], name: str) -> Any:
    """A result-changing setting of the run: the run's, never this worker's own.

    A run registered without it (by an older evalfleet) cannot be honoured: its items
    fail at once, saying how to go on.
    """
    try:
        return meta[name]
    except KeyError:
        raise PermanentError(
            f"run {store.run_id!r} was registered without the setting {name!r} (by an older "
            "evalfleet), so the workers cannot tell what it asked for: start it over with the "
            "same command and --restart") from None


def run_dtype(store: RunStore, meta: dict[str, Any], device: "torch.device") -> "torch.dtype":
    """The torch dtype the run asked for, on this worker's ``device``; refused if the device lacks it."""
    import torch

    from workers.models.loading import pick_dtype

    try:
        dtype = pick_dtype(run_setting(store, meta, "dtype"), device)
    except ValueError as exc:
        raise PermanentError(f"run {store.run_id!r}: {exc}") from None
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PermanentError(f"run {store.run_id!r} asks for bfloat16, which {device} "
                             f"({torch.cuda.get_device_name(device)}) does not support: start it "
                             "over with EVALFLEET_DTYPE=float16 and --restart, or use other GPUs")
    return dtype
