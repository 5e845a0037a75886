"""Waiting for a stage to finish (done + failed == total) with a progress bar."""

from __future__ import annotations

import time
from typing import Callable

from tqdm import tqdm

from shared.store import Progress, RunStore


def wait_for_stage(store: RunStore, stage: str, poll_seconds: float,
                   check: Callable[[], None] = lambda: None) -> Progress:
    """Block until every item of the stage is done or failed; ``check`` raises to abort."""
    progress = store.progress(stage)
    with tqdm(total=progress.total, desc=f"{store.run_id} {stage}", unit="item",
              initial=progress.done + progress.failed, dynamic_ncols=True) as bar:
        while not progress.finished:
            check()
            time.sleep(poll_seconds)
            progress = store.progress(stage)
            bar.update(progress.done + progress.failed - bar.n)
            bar.set_postfix(failed=progress.failed, refresh=False)
    return progress
