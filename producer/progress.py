"""Waiting for a stage to finish (done + failed == total) with a progress bar."""

from __future__ import annotations

import logging
import time
from typing import Callable

from tqdm import tqdm

from shared.store import OUTAGE_ERRORS, Progress, RunStore

log = logging.getLogger(__name__)

# How long the wait rides out Redis being unreachable (a restart, a failover) before it
# gives up. Everything is in Redis, so waiting loses nothing; giving up exits with 3.
REDIS_OUTAGE_SECONDS = 120.0


def wait_for_stage(store: RunStore, stage: str, poll_seconds: float,
                   check: Callable[[], None] = lambda: None, keys: list[str] | None = None,
                   label: str = "", outage_seconds: float = REDIS_OUTAGE_SECONDS) -> Progress:
    """Block until every item of the stage (or of ``keys``) is done or failed.

    ``check`` is called while waiting and raises to abort (e.g. the local workers died).
    Redis may be unreachable for up to ``outage_seconds`` at a time.
    """
    poll = _OutageTolerantPoll(store, stage, keys, outage_seconds)
    progress = poll.progress()
    while progress is None:
        time.sleep(poll_seconds)
        progress = poll.progress()
    with tqdm(total=progress.total, desc=f"{store.run_id} {label or stage}", unit="item",
              initial=progress.done + progress.failed, dynamic_ncols=True) as bar:
        while not progress.finished:
            check()
            time.sleep(poll_seconds)
            progress = poll.progress() or progress
            bar.update(progress.done + progress.failed - bar.n)
            bar.set_postfix(failed=progress.failed, refresh=False)
    return progress


class _OutageTolerantPoll:
    """``store.progress``; None while Redis is away, and the error once it has been away too long."""

    def __init__(self, store: RunStore, stage: str, keys: list[str] | None, outage_seconds: float):
        self.store, self.stage, self.keys = store, stage, keys
        self.outage_seconds = outage_seconds
        self.down_since: float | None = None

    def progress(self) -> Progress | None:
        try:
            progress = self.store.progress(self.stage, self.keys)
        except OUTAGE_ERRORS as exc:
            now = time.monotonic()
            if self.down_since is None:
                self.down_since = now
                log.warning("Redis unreachable (%s): waiting up to %.0f s for it", exc,
                            self.outage_seconds)
            if now - self.down_since > self.outage_seconds:
                raise
            return None
        if self.down_since is not None:
            log.info("Redis is back after %.1f s", time.monotonic() - self.down_since)
            self.down_since = None
        return progress
