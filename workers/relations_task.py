"""The relations task: one image's pairs, every top-K predicate, one batched generation."""

from __future__ import annotations

import logging
import time
import zlib

from shared.images import ImageFileError, open_image
from shared.messages import RELATIONS_STAGE, RELATIONS_TASK
from shared.relation_prompt import BoxOutsideImage, build_relation_prompt
from shared.store import RunStore
from workers.celery_app import app, settings
from workers.runtime import device_name, relation_generator, run_store, worker_name
from workers.task_support import give_up_or_retry, pending_items

log = logging.getLogger(__name__)

# The fields of a result in stage2_generated_results.json (SPEC.md).
RESULT_FIELDS = ("image_id", "subject", "object", "stage1_top_k", "has_gt", "gt_predicates")


@app.task(bind=True, name=RELATIONS_TASK, acks_late=True, max_retries=settings.task_max_retries)
def generate_relations(self, run_id: str, keys: list[str]) -> dict[str, int]:
    """Generate a description for every top-K predicate of the given pairs of one image."""
    store = run_store(run_id)
    pending = pending_items(store, RELATIONS_STAGE, keys)
    if not pending:
        return {"generated": 0}
    meta = store.meta()
    image_path = next(iter(pending.values()))["image_path"]
    try:
        image = open_image(image_path)
    except ImageFileError as exc:
        for key in pending:
            store.mark_failed(RELATIONS_STAGE, key, str(exc))
        return {"generated": 0}
    jobs = _prompts(store, pending, image.width, image.height)
    if not jobs:
        return {"generated": 0}
    try:
        texts, seconds = _generate(store, meta, image, [prompt for _, _, prompt in jobs], keys[0])
    except Exception as exc:
        give_up_or_retry(self, store, RELATIONS_STAGE, list(dict.fromkeys(k for k, _, _ in jobs)), exc)
        return {"generated": 0}
    _store_results(store, pending, jobs, texts, seconds)
    return {"generated": len(texts)}


def _prompts(store: RunStore, pending: dict, width: int, height: int) -> list[tuple[str, dict, str]]:
    """(key, stage-1 entry, prompt) for every top-K predicate; a pair with a bad box fails alone."""
    jobs = []
    for key, item in pending.items():
        try:
            pair_jobs = [
                (key, entry, build_relation_prompt(item["subject_obj"], item["object_obj"],
                                                   entry["predicate"], width, height))
                for entry in item["stage1_top_k"]
            ]
        except BoxOutsideImage as exc:
            store.mark_failed(RELATIONS_STAGE, key, f"{item['image_path']}: {exc}")
            continue
        jobs.extend(pair_jobs)
    return jobs


def _generate(store: RunStore, meta: dict, image, prompts: list[str],
              first_key: str) -> tuple[list[str], float]:
    generator = relation_generator(store, meta)
    # Seeded per task, so a redelivered task samples the same text.
    seed = int(meta["seed"]) + zlib.crc32(first_key.encode())
    start = time.perf_counter()
    texts = generator.generate(image, prompts, seed=seed)
    return texts, time.perf_counter() - start


def _store_results(store: RunStore, pending: dict, jobs: list, texts: list[str], seconds: float) -> None:
    generated: dict[str, list[dict]] = {}
    for (key, entry, _), text in zip(jobs, texts):
        generated.setdefault(key, []).append({
            "predicate": entry["predicate"],
            "similarity": entry["similarity"],
            "generated_description": text,
        })
    worker = worker_name()
    for key, descriptions in generated.items():
        result = {field: pending[key][field] for field in RESULT_FIELDS}
        result["stage2_generated"] = descriptions
        result["worker"] = worker
        result["seconds"] = round(seconds * len(descriptions) / len(texts), 4)
        store.mark_done(RELATIONS_STAGE, key, result)
    store.count(RELATIONS_STAGE, "tasks_generated")
    store.count(RELATIONS_STAGE, "descriptions_generated", len(texts))
    store.add_device(device_name())

