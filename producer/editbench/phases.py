"""The editbench phase controller: drives a registered run to its end.

It enqueues every pending edit, waits until every edit item is done or failed
(done + failed == total: a queue can read empty while a worker still holds a task),
then enqueues the score items of the pairs whose edit succeeded, and waits again.
Workers swap from the editor to the judge once, when their first score task arrives,
so there is one swap per worker process per run (none where both fit).
``phase_scope="category"`` edits then scores one category at a time, the order of the
editbench baseline (README, Baselines).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from celery import Celery

from config import Settings
from producer.editbench.register import EditbenchRun
from producer.progress import stall_watch, wait_for_stage
from producer.stale_messages import take_out_stale_messages
from shared.messages import EDIT_STAGE, EDIT_TASK, SCORE_STAGE, SCORE_TASK
from shared.store import connect

log = logging.getLogger(__name__)

PHASE_SCOPES = ("run", "category")


class PhaseController:
    """Drives one run's phases; usable alone against a fleet that is already running."""

    def __init__(self, settings: Settings, app: Celery, run: EditbenchRun,
                 check: Callable[[], None] = lambda: None):
        self.settings = settings
        self.app = app
        self.run = run
        self.store = run.store
        self.check = check

    def drive(self, scope: str = "run") -> None:
        if scope not in PHASE_SCOPES:
            raise ValueError(f"phase scope {scope!r}: use one of {', '.join(PHASE_SCOPES)}")
        if scope == "run":
            groups = [("", [k for keys in self.run.keys_by_category.values() for k in keys])]
        else:
            groups = list(self.run.keys_by_category.items())
        # Workers drop the editor instead of keeping a pinned host copy of it once the
        # edit stage is closed: only after the run's last edit phase.
        self.store.reopen_stage(EDIT_STAGE)
        for number, (label, keys) in enumerate(groups, 1):
            if not self.run.external_edits:  # edits made elsewhere are registered done or failed
                self._phase(EDIT_STAGE, EDIT_TASK, self.settings.queue_edit, keys, 1, label)
            if number == len(groups):
                self.store.close_stage(EDIT_STAGE)
            score_keys = self._register_scores(keys)
            self._phase(SCORE_STAGE, SCORE_TASK, self.settings.queue_score, score_keys,
                        self.settings.judge_batch_size, label)

    def _register_scores(self, keys: list[str]) -> list[str]:
        """Score items for the pairs whose edit succeeded, carrying the edited image's path."""
        edited = {k: v for k, v in zip(keys, self.store.get_done(EDIT_STAGE, keys)) if v is not None}
        items = self.store.get_items(EDIT_STAGE, list(edited))
        self.store.add_items(SCORE_STAGE, {
            key: {**item, "edited_path": edited[key]["edited_path"],
                  "edited_digest": edited[key]["edited_digest"]}
            for key, item in zip(edited, items)
        })
        return list(edited)

    def _phase(self, stage: str, task: str, queue: str, keys: list[str], chunk: int, label: str) -> None:
        start = time.time()
        done = self.store.is_done(stage, keys)
        pending = [k for k, is_done in zip(keys, done) if not is_done]
        # An item that failed in an earlier attempt of this run gets another chance.
        self.store.clear_failed(stage, pending)
        # What an interrupted attempt left queued goes: its items are sent again, those in flight first.
        stale = take_out_stale_messages(self.app, connect(self.settings.broker), queue, self.store.run_id)
        in_flight, rest = stale.split(pending)
        sent = in_flight + rest
        for i in range(0, len(sent), chunk):
            self.app.send_task(task, args=[self.store.run_id, sent[i:i + chunk]], queue=queue)
        log.info("%s phase%s: %d items, %d already done, %d enqueued", stage,
                 f" of {label}" if label else "", len(keys), len(keys) - len(pending), len(sent))
        wait_for_stage(self.store, stage, self.settings.poll_interval_seconds, self.check,
                       keys=keys, label=f"{stage} {label}".strip(),
                       stall=stall_watch(self.settings, self.app, queue, task))
        self.store.add_phase_time(stage, start, time.time())
