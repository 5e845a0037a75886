"""Waiting for a stage to finish (done + failed == total) with a progress bar."""

from __future__ import annotations

import time
from typing import Callable

from tqdm import tqdm

from shared.store import Progress, RunStore


def wait_for_stage(store: RunStore, stage: str, poll_seconds: float,
                   check: Callable[[], None] = lambda: None, keys: list[str] | None = None,
                   label: str = "") -> Progress:
    """Block until every item of the stage (or of ``keys``) is done or failed.

    ``check`` is called while waiting and raises to abort (e.g. the local workers died).
    """
    progress = store.progress(stage, keys)
    with tqdm(total=progress.total, desc=f"{store.run_id} {label or stage}", unit="item",
              initial=progress.done + progress.failed, dynamic_ncols=True) as bar:
        while not progress.finished:
            check()
            time.sleep(poll_seconds)
            progress = store.progress(stage, keys)
            bar.update(progress.done + progress.failed - bar.n)
            bar.set_postfix(failed=progress.failed, refresh=False)
    return progress
