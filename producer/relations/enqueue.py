"""The relations job on the producer side: prepare the pairs, register the run, enqueue what is pending."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery

from config import Settings
from producer.run_identity import claim_run
from producer.stale_messages import take_out_stale_messages
from shared import storage
from shared.keys import derive_run_id, inputs_digest, normalize_image_id, relation_key
from shared.messages import RELATIONS_STAGE, RELATIONS_TASK
from shared.redaction import without_password
from shared.relations.data import prepare_data_for_inference
from shared.relations.run_settings import RelationsRunSettings
from shared.store import RunStore, connect

log = logging.getLogger(__name__)

# An image with at least 1/BIG_IMAGE_SHARE of a task's prompt budget has tasks of its own.
BIG_IMAGE_SHARE = 8


@dataclass(frozen=True)
class Enqueued:
    run_id: str
    total: int
    invalid: int
    already_done: int
    pairs_sent: int
    tasks_sent: int
    dropped_no_relation: int = 0  # candidates: see PreparedRelations
    merged_repeats: int = 0

    @property
    def needs_workers(self) -> bool:
        return self.pairs_sent > 0


def run_settings(settings: Settings) -> RelationsRunSettings:
    """The settings a relations run is registered with."""
    local = settings.relations_backend == "local"
    budgets = settings.token_budgets
    return RelationsRunSettings(
        batch_size=settings.batch_size, max_batch=settings.max_batch,
        workers_per_gpu=settings.workers_per_gpu,
        # Its password is not stored: the workers' own setting gives it.
        relations_endpoint_url="" if local else without_password(settings.relations_endpoint_url),
        relations_endpoint_api_key_env="" if local else settings.relations_endpoint_api_key_env,
        relations_backend=settings.relations_backend,
        relations_endpoint_model="" if local else settings.relations_endpoint_model,
        # The local model's settings make no endpoint's text.
        relations_model=settings.relations_model if local else "",
        model_revision=settings.model_revision if local else "", dtype=settings.dtype if local else "",
        top_k=settings.top_k, max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
        seed=settings.seed, bench_token_budgets=budgets.spec if budgets else "")


def result_settings(settings: Settings) -> dict[str, Any]:
    """The settings that change the generated text: part of the run id and of its identity."""
    return run_settings(settings).identity()


# What a relations run is: a run name with other values of these is another run.
IDENTITY = ("inputs", *RelationsRunSettings.identity_keys())


def enqueue_relations(settings: Settings, app: Celery, store_client, stage1: str | Path, input_path: str | Path,
                      run_name: str | None = None, restart: bool = False) -> Enqueued:
    """Register the run and send one task per image (chunked) for the pairs not done yet.

    Raises InputFileError (StorageError for an object by URL) before anything is registered if an
    input file is unusable, and RunMismatchError if ``run_name`` is a run of other inputs or settings.
    """
    prepared = prepare_data_for_inference(stage1, input_path, settings.top_k,
                                          data_root=settings.data_root)
    run = run_settings(settings)
    # The images are content of the input too: another image is another run (as for editbench).
    # Each is read once here; an object's digest also goes with its pairs, so a worker notices
    # an object changed since (see workers/images.py).
    images = prepared.image_digests()
    inputs = [stage1, input_path, *images]
    digests = [*prepared.input_digests, *images.values()]
    run_id = run_name or derive_run_id("relations", inputs, run.identity(), digests)
    store = RunStore(store_client, run_id)
    claim_run(store, {"job": "relations", "run_id": run_id, "created": time.time(),
                      "stage1": without_password(str(stage1)), "input": without_password(str(input_path)),
                      "inputs": inputs_digest(inputs, digests),
                      "preparation": {"dropped_no_relation": prepared.dropped_no_relation,
                                      "merged_repeated_predicates": prepared.merged_repeats},
                      **run.record()},
              IDENTITY, restart)
    items = {relation_key(p["image_id"], p["subject"], p["object"]): p for p in prepared.pairs}
    for pair in items.values():
        if storage.is_url(pair["image_path"]) and pair["image_path"] in images:
            pair["image_sha256"] = images[pair["image_path"]]
    store.add_items(RELATIONS_STAGE, items)
    store.add_items(RELATIONS_STAGE, {key: {"invalid": True} for key in prepared.failures})
    for key, reason in prepared.failures.items():
        store.mark_failed(RELATIONS_STAGE, key, reason)
        log.warning("not enqueued: %s", reason)

    done = store.done_keys(RELATIONS_STAGE)
    pending = [key for key in items if key not in done]
    # A pair that failed in an earlier attempt of this run gets another chance.
    store.clear_failed(RELATIONS_STAGE, pending)
    # What an interrupted attempt left queued goes: its pairs are sent again, those in flight first.
    stale = take_out_stale_messages(app, connect(settings.broker), settings.queue_relations, run_id)
    in_flight, rest = stale.split(pending)
    chunks = pack_tasks(in_flight, items, settings.task_prompts) + pack_tasks(rest, items, settings.task_prompts)
    for chunk in chunks:
        app.send_task(RELATIONS_TASK, args=[run_id, chunk], queue=settings.queue_relations)
    return Enqueued(run_id=run_id, total=len(items) + len(prepared.failures),
                    invalid=len(prepared.failures), already_done=len(items) - len(pending),
                    pairs_sent=len(in_flight) + len(rest), tasks_sent=len(chunks),
                    dropped_no_relation=prepared.dropped_no_relation, merged_repeats=prepared.merged_repeats)


def pack_tasks(keys: list[str], items: dict[str, dict], budget: int) -> list[list[str]]:
    """Keys grouped into tasks of at most ``budget`` prompts (pairs x their top-K predicates).

    An image's pairs stay together (its prefix is prefilled once per task). A big image (at
    least ``budget // BIG_IMAGE_SHARE`` prompts) has tasks of its own, split when it has more
    than ``budget``; small images share tasks (first fit, largest first), so a GPU decodes many
    of them at once with rows sized for small images. The tasks with the most prompts come
    first: workers take tasks in queue order, so a long task sent last would run alone at the
    end while every other GPU idles.
    """
    by_image: dict[str, list[str]] = {}
    for key in keys:
        by_image.setdefault(normalize_image_id(items[key]["image_id"]), []).append(key)
    prompts_of = {key: max(1, len(items[key]["stage1_top_k"])) for key in keys}

    def prompts(chunk: list[str]) -> int:
        return sum(prompts_of[k] for k in chunk)

    alone: list[list[str]] = []
    small: list[list[str]] = []
    for image_keys in by_image.values():
        if prompts(image_keys) < max(1, budget // BIG_IMAGE_SHARE):
            small.append(image_keys)
            continue
        piece, size = [], 0
        for key in image_keys:
            if piece and size + prompts_of[key] > budget:
                alone.append(piece)
                piece, size = [], 0
            piece.append(key)
            size += prompts_of[key]
        alone.append(piece)
    shared: list[list[str]] = []
    sizes: list[int] = []  # prompts of each shared task, kept as it fills
    for image_keys in sorted(small, key=lambda p: -prompts(p)):
        size = prompts(image_keys)
        home = next((i for i, used in enumerate(sizes) if used + size <= budget), None)
        if home is None:
            shared.append(list(image_keys))
            sizes.append(size)
        else:
            shared[home].extend(image_keys)
            sizes[home] += size
    return sorted(alone + shared, key=lambda task: -prompts(task))
