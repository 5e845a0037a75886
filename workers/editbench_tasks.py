"""Editbench tasks: edit one pair with the diffusion model; score a batch of pairs with the judge.

Each done record carries worker-side start and end times, so the phase barrier can be
checked from the outside (no score task starts before the last edit finished).
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

from shared.artifacts import write_once
from shared.images import ImageFileError, open_image
from shared.messages import EDIT_STAGE, EDIT_TASK, SCORE_STAGE, SCORE_TASK
from shared.store import OUTAGE_ERRORS, RunStore
from workers.celery_app import app, settings
from workers.outages import surviving_store_outages
from workers.runtime import editor_for, judge_for, run_prompts, run_store, worker_name
from workers.task_support import PermanentError, give_up_or_retry, pending_items

log = logging.getLogger(__name__)


@app.task(bind=True, name=EDIT_TASK, acks_late=True, max_retries=settings.task_max_retries)
def edit_pairs(self, run_id: str, keys: list[str]) -> dict[str, int]:
    store = run_store(run_id)
    # A Redis restart mid-task must not end the task in an exception: its items would be lost.
    return surviving_store_outages(store.client, lambda: _edit_pending(self, store, keys))


def _edit_pending(task, store: RunStore, keys: list[str]) -> dict[str, int]:
    edited = 0
    for key, item in pending_items(store, EDIT_STAGE, keys).items():
        started = time.time()
        try:
            original = open_image(item["original_path"])
        except ImageFileError as exc:
            store.mark_failed(EDIT_STAGE, key, str(exc))
            continue
        try:
            editor = editor_for(store)
            # Seeded by the run's seed and the item key: a rerun reproduces the image.
            seed = editor.seed_for(f"{store.meta()['seed']}|{key}")
            image = editor.edit(original, item["edit_instruction"], seed=seed)
        except OUTAGE_ERRORS:
            raise  # not the item's fault: surviving_store_outages waits for Redis
        except Exception as exc:
            give_up_or_retry(task, store, EDIT_STAGE, [key], exc)
            continue
        path, digest = _save_png(image, Path(item["edited_path"]))
        store.mark_done(EDIT_STAGE, key, {"edited_path": str(path), "edited_digest": digest,
                                          "seconds": round(time.time() - started, 4),
                                          "started_at": started, "finished_at": time.time(),
                                          "worker": worker_name()})
        store.count(EDIT_STAGE, "edits_executed")
        edited += 1
    return {"edited": edited}


def _save_png(image, path: Path) -> tuple[Path, str]:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return path, write_once(path, buf.getvalue())


@app.task(bind=True, name=SCORE_TASK, acks_late=True, max_retries=settings.task_max_retries)
def score_pairs(self, run_id: str, keys: list[str]) -> dict[str, int]:
    store = run_store(run_id)
    return surviving_store_outages(store.client, lambda: _score_pending(self, store, keys))


def _score_pending(task, store: RunStore, keys: list[str]) -> dict[str, int]:
    started = time.time()
    pending = pending_items(store, SCORE_STAGE, keys)
    try:
        prompts = run_prompts(store)
    except PermanentError as exc:  # the run has no templates: say so rather than guess
        give_up_or_retry(task, store, SCORE_STAGE, list(pending), exc)
        return {"scored": 0}
    batch = _judge_inputs(store, pending, prompts)
    if not batch:
        return {"scored": 0}
    try:
        scores = judge_for(store).score(list(batch.values()))
    except OUTAGE_ERRORS:
        raise
    except Exception as exc:
        give_up_or_retry(task, store, SCORE_STAGE, list(batch), exc)
        return {"scored": 0}
    finished = time.time()
    for key, result in zip(batch, scores):
        store.mark_done(SCORE_STAGE, key, {"score": result.score, "probabilities": result.probabilities,
                                           "started_at": started, "finished_at": finished,
                                           "worker": worker_name()})
    store.count(SCORE_STAGE, "scores_executed", len(scores))
    return {"scored": len(scores)}


def _judge_inputs(store: RunStore, pending: dict[str, dict], prompts) -> dict:
    """key -> JudgeItem; a pair whose images cannot be read fails alone."""
    from workers.judge import JudgeItem

    batch = {}
    for key, item in pending.items():
        try:
            original, edited = open_image(item["original_path"]), open_image(item["edited_path"])
        except ImageFileError as exc:
            store.mark_failed(SCORE_STAGE, key, str(exc))
            continue
        prompt = prompts.get_full_prompt(item["category"], item["original_description"],
                                         item["edit_instruction"])
        batch[key] = JudgeItem(original_image=original, edited_image=edited,
                               system_prompt=prompt["system_prompt"], user_prompt=prompt["user_prompt"])
    return batch
