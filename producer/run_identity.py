"""A run is one job over one set of inputs with one set of result-changing settings.

Those are fixed when the run is first registered and travel with it (the workers read
them from the run, not from their own environment). Registering the same run name
again with anything of that identity different is refused before anything is
written: the report, the stored settings and the model the workers load would
otherwise disagree with what the command asked for. ``--restart`` starts the run
over instead: its stored results and artifacts are deleted first.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

from shared import storage
from shared.errors import shown
from shared.store import RunStore

log = logging.getLogger(__name__)

RESTART_FLAG = "--restart"


class RunMismatchError(Exception):
    """A run name is taken by a run of another job, other inputs or other settings."""


def claim_run(store: RunStore, meta: Mapping[str, Any], identity: Iterable[str],
              restart: bool = False, artifacts_dir: str | None = None) -> None:
    """Register the run with ``meta``, or check that the stored run is the same run.

    ``identity`` names the keys of ``meta`` that change results (the job always does).
    Other settings (batch sizes) are operational: the latest registration's are kept.
    Raises RunMismatchError, having written nothing, if the stored run differs.
    """
    if restart:
        _start_over(store, artifacts_dir)
    stored = store.register(meta)
    differences = [(key, stored.get(key), meta.get(key)) for key in ("job", *identity)
                   if stored.get(key) != meta.get(key)]
    if differences:
        raise RunMismatchError(mismatch_message(store.run_id, differences))
    if stored != meta:
        store.update_meta({**meta, "created": stored.get("created", meta.get("created"))})


def mismatch_message(run_id: str, differences: list[tuple[str, Any, Any]]) -> str:
    listed = "; ".join(f"{key}: stored {shown(old)}, now {shown(new)}" for key, old, new in differences)
    return (f"run {run_id!r} exists with other settings ({listed}); nothing was written. "
            f"Use another --run name, or add {RESTART_FLAG} to start run {run_id!r} over "
            "(its stored results are deleted)")


def _start_over(store: RunStore, artifacts_dir: str | None) -> None:
    deleted = store.delete()
    if artifacts_dir is not None:
        # Edited images are written once: old ones would stand in for the new run's.
        storage.remove_under(artifacts_dir)
    log.warning("run %s started over: %d stored keys deleted", store.run_id, deleted)
