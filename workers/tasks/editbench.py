"""Editbench tasks: edit one pair with the diffusion model; score a batch of pairs with the judge.

Each done record carries worker-side start and end times, so the phase barrier can be
checked from the outside (no score task starts before the last edit finished).
"""

from __future__ import annotations

import io
import logging
import time

from shared import storage
from shared.editbench.judge_images import EDITED, INPUTS, ORIGINAL, images_sentence
from shared.editbench.judge_scores import JudgeFailure
from shared.editbench.prompt_manager import pair_fields
from shared.editbench.run_settings import EditbenchRunSettings
from shared.images import ImageFileError
from shared.messages import EDIT_STAGE, EDIT_TASK, SCORE_STAGE, SCORE_TASK
from shared.store import RunStore
from workers.celery_app import app
from workers.editing.compile import compile_seconds
from workers.editing.factory import editor_for
from workers.judging.factory import judge_for
from workers.judging.run_rubric import rubric_of
from workers.run_settings import read_run_settings
from workers.images import open_location
from workers.runtime import model_host, run_store, worker_name
from workers.tasks.base import TASK_LEVEL_ERRORS, ItemTask, failure_message, pending_items

log = logging.getLogger(__name__)


@app.task(bind=True, base=ItemTask, stage=EDIT_STAGE, name=EDIT_TASK)
def edit_pairs(self, run_id: str, keys: list[str]) -> dict[str, int]:
    """Edit each pair; retries and failures are ItemTask's."""
    return _edit_pending(run_store(run_id), keys)


def _edit_pending(store: RunStore, keys: list[str]) -> dict[str, int]:
    edited = 0
    run = read_run_settings(store, EditbenchRunSettings)
    editor = None  # loaded at the first pair whose image opens
    for key, item in pending_items(store, EDIT_STAGE, keys).items():
        started = time.time()
        try:
            originals = [open_location(path) for path in item.get("original_paths", [item["original_path"]])]
        except ImageFileError as exc:
            store.mark_failed(EDIT_STAGE, key, str(exc))
            continue
        if editor is None:
            editor = editor_for(model_host(store), run)
        problem = editor.family.several_images_problem(len(originals))
        if problem:  # this pair cannot be edited by this editor; the others go on
            store.mark_failed(EDIT_STAGE, key, problem)
            continue
        # Seeded by the run's seed and the item key: a rerun reproduces the image.
        seed = editor.seed_for(f"{run.seed}|{key}")
        compiled_before, edit_started = compile_seconds(), time.perf_counter()
        image = editor.edit(originals if len(originals) > 1 else originals[0], item["edit_instruction"],
                            seed=seed)
        edit_seconds = time.perf_counter() - edit_started
        compiling = min(edit_seconds, compile_seconds() - compiled_before)
        digest = _save_png(image, item["edited_path"])
        # The settings the image was made with (the family's defaults applied): the report's.
        record = {"edited_path": item["edited_path"], "edited_digest": digest,
                  "edit_settings": editor.settings.as_record(),
                  "seconds": round(time.time() - started, 4),
                  # The editor's own time, and the part of it that was compiling.
                  "edit_seconds": round(edit_seconds, 4), "compile_seconds": round(compiling, 4),
                  "started_at": started, "finished_at": time.time(), "worker": worker_name()}
        if editor.last_cache:
            record["step_cache"] = editor.last_cache
        store.mark_done(EDIT_STAGE, key, record)
        store.add_worker_time(worker_name(), "editing", edit_seconds - compiling)
        if compiling > 0:
            store.add_worker_time(worker_name(), "compiling", compiling)
        store.count(EDIT_STAGE, "edits_executed")
        edited += 1
    return {"edited": edited}


def _save_png(image, location: str) -> str:
    """Write the edit once at its location (a file or an object); the sha256 of what stays."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return storage.write_once(location, buf.getvalue())


@app.task(bind=True, base=ItemTask, stage=SCORE_STAGE, name=SCORE_TASK)
def score_pairs(self, run_id: str, keys: list[str]) -> dict[str, int]:
    """Score a batch of pairs; retries and failures are ItemTask's."""
    return _score_pending(run_store(run_id), keys)


def _score_pending(store: RunStore, keys: list[str]) -> dict[str, int]:
    started = time.time()
    pending = pending_items(store, SCORE_STAGE, keys)
    # A run without its settings raises PermanentError: its pairs fail at once, saying why.
    run = read_run_settings(store, EditbenchRunSettings)
    judging = rubric_of(store.run_id, run)
    batch = _judge_inputs(store, pending, judging)
    if not batch:
        return {"scored": 0}
    judge = judge_for(model_host(store), run)  # loading it (if it must) is the worker's loading time, not scoring
    scoring_started = time.time()
    results = _score_batch(store, batch, judge)
    finished = time.time()
    scored = 0
    for key, rows in results.items():
        failures = [f"criterion {name}: {r.reason}" for name, r in rows.items() if isinstance(r, JudgeFailure)]
        if failures:
            store.mark_failed(SCORE_STAGE, key, "; ".join(failures))
            continue
        category = pending[key]["category"]
        store.mark_done(SCORE_STAGE, key, {**_score_record(judging.rubric, rows, category),
                                           "started_at": started, "finished_at": finished,
                                           "worker": worker_name()})
        scored += 1
    store.count(SCORE_STAGE, "scores_executed", scored)
    store.add_worker_time(worker_name(), "scoring", finished - scoring_started)
    return {"scored": scored}


def _score_record(rubric, rows: dict, category: str) -> dict:
    """The pair's stored result: its overall score and each criterion's (those of its category).
    A one-criterion rubric keeps the earlier shape too (``probabilities`` of its one score)."""
    criteria = {name: {"score": r.score, "probabilities": r.probabilities, "source": r.source,
                       **({"rationale": r.rationale} if r.rationale is not None else {})}
                for name, r in rows.items()}
    record = {"score": rubric.overall({name: r.score for name, r in rows.items()}, category),
              "criteria": criteria}
    if len(rows) == 1:
        [only] = rows.values()
        record["probabilities"] = only.probabilities
    return record


def _score_batch(store: RunStore, batch: dict[str, dict], judge) -> dict[str, dict]:
    """key -> {criterion -> JudgeScore | JudgeFailure}. The criteria of the batch's pairs are
    scored together. A batch that fails for a permanent reason is narrowed to the pair(s)
    that caused it: each is scored alone, and only those that fail alone fail."""
    try:
        return _scored_rows(judge, batch)
    except TASK_LEVEL_ERRORS:
        raise  # the whole task is retried
    except Exception as exc:
        if len(batch) == 1:
            raise
        log.warning("a judge batch of %d pairs failed (%r): scoring them one by one", len(batch), exc)
    scores = {}
    for key, rows in batch.items():
        try:
            scores.update(_scored_rows(judge, {key: rows}))
        except TASK_LEVEL_ERRORS:
            raise
        except Exception as exc:
            store.mark_failed(SCORE_STAGE, key, failure_message(exc))
    return scores


def _scored_rows(judge, batch: dict[str, dict]) -> dict[str, dict]:
    flat = [(key, name, row) for key, rows in batch.items() for name, row in rows.items()]
    results = judge.score([row for _, _, row in flat])
    out: dict[str, dict] = {key: {} for key in batch}
    for (key, name, _), result in zip(flat, results, strict=True):
        out[key][name] = result
    return out


class JudgeImageMissing(Exception):
    """An image the judge is to be shown could not be read when the run was registered."""


def _judge_inputs(store: RunStore, pending: dict[str, dict], judging) -> dict[str, dict]:
    """key -> {criterion -> JudgeItem}, the criteria of the pair's category, each showing the
    images its rubric lists; a pair whose images cannot be read fails alone, naming the file."""
    batch = {}
    for key, item in pending.items():
        criteria = judging.rubric.criteria_for(item["category"])
        try:
            images = _pair_judge_images(item, criteria)
        except (ImageFileError, JudgeImageMissing) as exc:
            store.mark_failed(SCORE_STAGE, key, str(exc))
            continue
        batch[key] = {criterion.name: _judge_row(item, criterion, judging, images) for criterion in criteria}
    return batch


def _pair_judge_images(item: dict, criteria) -> dict[tuple[str, str], list]:
    """(kind, field) -> the opened images of each source the criteria show; each file opened once."""
    wanted = {(s.kind, s.field) for c in criteria for s in c.images}
    paths = {(ORIGINAL, ""): [item["original_path"]], (EDITED, ""): [item["edited_path"]],
             (INPUTS, ""): item.get("original_paths", [item["original_path"]])}
    problems = item.get("judge_image_problems", {})
    opened: dict[str, object] = {}
    images = {}
    for kind, name in sorted(wanted):
        if kind == "field" and name in problems:
            raise JudgeImageMissing(f"the judge is to be shown the image of field {name!r}: {problems[name]}")
        found = paths[(kind, name)] if kind != "field" else item.get("judge_images", {}).get(name, [])
        for path in found:
            if path not in opened:
                opened[path] = open_location(path)
        images[(kind, name)] = [opened[path] for path in found]
    return images


def _judge_row(item: dict, criterion, judging, images: dict[tuple[str, str], list]):
    """One criterion's row: its images in the rubric's order (a record field's only where the
    pair has it), and its prompts, told which image is which."""
    from workers.judging.judge import JudgeImage, JudgeItem

    shown = [(source.label_for(len(found)), found) for source in criterion.images
             if (found := images[(source.kind, source.field)])]
    prompt = judging.prompts[criterion.name].get_full_prompt(
        item["category"], item.get("original_description"), item["edit_instruction"],
        {**pair_fields(item), "images": images_sentence([(label, len(found)) for label, found in shown])})
    user = prompt["user_prompt"]
    if judging.reasoning_suffix is not None:
        user = f"{user}\n\n{judging.reasoning_suffix}"
    return JudgeItem([JudgeImage(label, image) for label, found in shown for image in found],
                     system_prompt=prompt["system_prompt"], user_prompt=user)
