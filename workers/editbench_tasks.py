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
from shared.store import RunStore
from workers.celery_app import app
from workers.runtime import editor_for, judge_for, run_prompts, run_store, worker_name
from workers.task_support import TASK_LEVEL_ERRORS, ItemTask, failure_message, pending_items

log = logging.getLogger(__name__)


@app.task(bind=True, base=ItemTask, stage=EDIT_STAGE, name=EDIT_TASK)
def edit_pairs(self, run_id: str, keys: list[str]) -> dict[str, int]:
    """Edit each pair; retries and failures are ItemTask's."""
    return _edit_pending(run_store(run_id), keys)


def _edit_pending(store: RunStore, keys: list[str]) -> dict[str, int]:
    edited = 0
    for key, item in pending_items(store, EDIT_STAGE, keys).items():
        started = time.time()
        try:
            original = open_image(item["original_path"])
        except ImageFileError as exc:
            store.mark_failed(EDIT_STAGE, key, str(exc))
            continue
        editor = editor_for(store)
        # Seeded by the run's seed and the item key: a rerun reproduces the image.
        seed = editor.seed_for(f"{store.meta()['seed']}|{key}")
        image = editor.edit(original, item["edit_instruction"], seed=seed)
        path, digest = _save_png(image, Path(item["edited_path"]))
        # The settings the image was made with (the family's defaults applied): the report's.
        store.mark_done(EDIT_STAGE, key, {"edited_path": str(path), "edited_digest": digest,
                                          "edit_settings": editor.settings.as_record(),
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


@app.task(bind=True, base=ItemTask, stage=SCORE_STAGE, name=SCORE_TASK)
def score_pairs(self, run_id: str, keys: list[str]) -> dict[str, int]:
    """Score a batch of pairs; retries and failures are ItemTask's."""
    return _score_pending(run_store(run_id), keys)


def _score_pending(store: RunStore, keys: list[str]) -> dict[str, int]:
    started = time.time()
    pending = pending_items(store, SCORE_STAGE, keys)
    # A run without templates raises PermanentError: its pairs fail at once, saying why.
    batch = _judge_inputs(store, pending, run_prompts(store))
    if not batch:
        return {"scored": 0}
    scores = _score_batch(store, batch)
    finished = time.time()
    for key, result in scores.items():
        store.mark_done(SCORE_STAGE, key, {"score": result.score, "probabilities": result.probabilities,
                                           "started_at": started, "finished_at": finished,
                                           "worker": worker_name()})
    store.count(SCORE_STAGE, "scores_executed", len(scores))
    return {"scored": len(scores)}


def _score_batch(store: RunStore, batch: dict) -> dict:
    """key -> score. A batch that fails for a permanent reason is narrowed to the pair(s)
    that caused it: each is scored alone, and only those that fail alone fail."""
    judge = judge_for(store)
    try:
        return dict(zip(batch, judge.score(list(batch.values()))))
    except TASK_LEVEL_ERRORS:
        raise  # the whole task is retried
    except Exception as exc:
        if len(batch) == 1:
            raise
        log.warning("a judge batch of %d pairs failed (%r): scoring them one by one", len(batch), exc)
    scores = {}
    for key, item in batch.items():
        try:
            [scores[key]] = judge.score([item])
        except TASK_LEVEL_ERRORS:
            raise
        except Exception as exc:
            store.mark_failed(SCORE_STAGE, key, failure_message(exc))
    return scores


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
