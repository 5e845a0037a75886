"""The relations task: the pairs of one or more images, every top-K predicate, one generation
(on this worker's device, or through the run's endpoint)."""

from __future__ import annotations

import logging
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable

from PIL import Image

from shared.errors import RecordError
from shared import storage
from shared.images import ImageFileError, PathOutsideRoot, resolve_inside
from shared.messages import RELATIONS_STAGE, RELATIONS_TASK
from shared.relations.prompt import BoxOutsideImage, build_relation_prompt, normalize_bbox
from shared.relations.result import relation_result
from shared.relations.run_settings import RelationsRunSettings
from shared.store import RunStore
from workers.celery_app import app, settings
from workers.images import open_location
from workers.relations.endpoint import EndpointAnswer, EndpointRelations
from workers.relations.factory import endpoint_relations, relation_generator
from workers.run_settings import read_run_settings
from workers.runtime import device_name, model_host, run_store, worker_name
from workers.tasks.base import ItemTask, pending_items, sample_progress

if TYPE_CHECKING:  # the model's modules load in the task, not when the worker starts
    from workers.relations.generator import RelationGenerator

log = logging.getLogger(__name__)

# Threads that open a task's images.
OPEN_THREADS = 4
# Benchmark-shaped runs this process has warned of (once each).
_BENCH_RUNS_SEEN: set[str] = set()


@app.task(bind=True, base=ItemTask, stage=RELATIONS_STAGE, name=RELATIONS_TASK)
def generate_relations(self, run_id: str, keys: list[str]) -> dict[str, int]:
    """Generate a description for every top-K predicate of the given pairs (of one or more images).

    Retries and failures are ItemTask's: whatever escapes fails the unfinished pairs.
    """
    return _generate_pending(run_store(run_id), keys)


def _generate_pending(store: RunStore, keys: list[str]) -> dict[str, int]:
    pending = pending_items(store, RELATIONS_STAGE, keys)
    if not pending:
        return {"generated": 0}
    run = read_run_settings(store, RelationsRunSettings)
    # An endpoint run loads no model: the server makes the text.
    generator = endpoint_relations(settings, run) if run.endpoint else relation_generator(model_host(store), run)
    images, paths, jobs = _usable_images(store, generator, _by_image(pending))
    if not jobs:
        return {"generated": 0}
    prompts = [[prompt for _, _, prompt in image_jobs] for image_jobs in jobs]
    results = PairResults(store, pending, jobs)
    if isinstance(generator, EndpointRelations):
        seeds = [[prompt_seed(run.seed, key, entry["predicate"]) for key, entry, _ in image_jobs] for image_jobs in jobs]
        # The content each object was registered with: read again as the task opened it.
        digests = [pending[image_jobs[0][0]].get("image_sha256") for image_jobs in jobs]
        generator.describe(paths, prompts, seeds, results.endpoint_answer, digests)
    else:
        budgets = prompt_budgets(run, store.run_id, jobs)
        _generate(generator, run.seed, images, prompts, keys[0], results.answer, budgets)
        store.add_device(device_name())
    store.count(RELATIONS_STAGE, "tasks_generated")
    return {"generated": results.descriptions}


def prompt_seed(run_seed: int, key: str, predicate: str) -> int:
    """A prompt's own seed: the same whichever task carries it, so a redelivered or repacked
    prompt samples the same text where the server honours seeds."""
    return run_seed + zlib.crc32(f"{key}|{predicate}".encode())


def prompt_budgets(run: RelationsRunSettings, run_id: str, jobs: list[list[tuple]]) -> list[list[int]] | None:
    """Each prompt's token budget for a run registered with the benchmark-only
    EVALFLEET_BENCH_TOKEN_BUDGETS (drawn from the prompt's pair and predicate, so any task split
    gives it the same), else None: every prompt gets the run's max_new_tokens."""
    budgets = run.token_budgets
    if budgets is None:
        return None
    if run_id not in _BENCH_RUNS_SEEN:
        _BENCH_RUNS_SEEN.add(run_id)
        log.warning("run %s was registered with EVALFLEET_BENCH_TOKEN_BUDGETS=%s, a setting for "
                    "benchmarks only: its descriptions end at drawn lengths (benchmark-shaped, not "
                    "a real run's)", run_id, budgets.spec)
    return [[budgets.budget(key, entry["predicate"], run.max_new_tokens) for key, entry, _ in image_jobs]
            for image_jobs in jobs]


def _by_image(pending: dict[str, dict]) -> list[dict[str, dict]]:
    """The pending pairs split by image, in task order (a task may pack several small images)."""
    groups: dict[str, dict[str, dict]] = {}
    for key, item in pending.items():
        groups.setdefault(item["image_path"], {})[key] = item
    return list(groups.values())


def _usable_images(store: RunStore, generator: RelationGenerator | EndpointRelations, groups: list[dict[str, dict]]
                   ) -> tuple[list[Image.Image], list[str], list[list[tuple]]]:
    """(images, their files, their prompt jobs) for the groups of pending pairs (one group per image).

    An image that cannot be used (the file, or the model's processor refuses it) fails its own
    pairs, and only they; so does a pair with a bad box.
    """
    # Decoding a task's images (40 PNGs when small images share a task) lets go of the GIL.
    with ThreadPoolExecutor(OPEN_THREADS) as pool:
        opened = list(pool.map(_open_pair_image, groups))
    images, paths, jobs = [], [], []
    for image_pending, (image, path, problem) in zip(groups, opened):
        if image is not None and (refused := generator.image_problem(image)):
            problem = f"image file {next(iter(image_pending.values()))['image_path']}: {refused}"
        if problem is not None:
            for key, item in image_pending.items():
                store.mark_failed(RELATIONS_STAGE, key, failure_reason(item, "image_path", problem))
            continue
        image_jobs = _prompts(store, image_pending, image.width, image.height)
        if image_jobs:
            images.append(image)
            paths.append(path)
            jobs.append(image_jobs)
    return images, paths, jobs


def failure_reason(item: dict, field: str, message: str) -> str:
    """A worker-side failure phrased like a preparation one: file, record, field."""
    source = item.get("source")
    if not source:  # an item registered before pairs carried their source
        return f"{item['image_path']}: {message}"
    return str(RecordError(source["file"], source["record"], field, message))


def _open_pair_image(pending: dict) -> tuple[Image.Image | None, str, str | None]:
    """(the image the pending pairs share, its file, None), or (None, its file, why it cannot be used)."""
    item = next(iter(pending.values()))
    image_path = item["image_path"]
    try:
        if settings.data_root and not storage.is_url(image_path):
            # Checked again here: the file may have been swapped for a link since preparation.
            image_path = resolve_inside(image_path, settings.data_root)
        return open_location(image_path, item.get("image_sha256")), image_path, None
    except (ImageFileError, PathOutsideRoot) as exc:
        return None, image_path, str(exc)


def _box_problem(item: dict, width: int, height: int) -> str | None:
    """Why the pair's boxes cannot be used with this image, or None."""
    for role in ("subject", "object"):
        try:
            normalize_bbox(item[f"{role}_obj"]["bbox"], width, height)
        except BoxOutsideImage as exc:
            where = item.get("source", {}).get(f"{role}_field", f"{role}_obj")
            return failure_reason(item, f"{where}.bbox", f"{exc} ({item['image_path']})")
    return None


def _prompts(store: RunStore, pending: dict, width: int, height: int) -> list[tuple[str, dict, str]]:
    """(key, stage-1 entry, prompt) for every top-K predicate; a pair with a bad box fails alone."""
    jobs = []
    for key, item in pending.items():
        problem = _box_problem(item, width, height)
        if problem:
            store.mark_failed(RELATIONS_STAGE, key, problem)
            continue
        jobs.extend(
            (key, entry, build_relation_prompt(item["subject_obj"], item["object_obj"],
                                               entry["predicate"], width, height))
            for entry in item["stage1_top_k"]
        )
    return jobs


def _generate(generator: RelationGenerator, run_seed: int, images: list, prompts: list[list[str]],
              first_key: str, on_answer: Callable[[int, int, str], None],
              budgets: list[list[int]] | None) -> None:
    # Seeded per task, so a redelivered task samples the same text.
    seed = run_seed + zlib.crc32(first_key.encode())
    generator.generate_many(images, prompts, seed=seed, on_answer=on_answer, budgets=budgets)


class PairResults:
    """Stores each pair's result as soon as its last description is generated.

    Progress moves within a task (``status`` and the producer's bar count pairs as they end,
    not whole tasks), and a task cut off keeps the pairs it finished.
    """

    def __init__(self, store: RunStore, pending: dict[str, dict], jobs: list[list[tuple]]):
        self.store, self.pending, self.jobs = store, pending, jobs
        # (image, index) -> (pair, place among the pair's descriptions: its top-K order)
        self.place: dict[tuple[int, int], tuple[str, int]] = {}
        self.descriptions_of: dict[str, list[dict | None]] = {}
        for image, image_jobs in enumerate(jobs):
            for index, (key, _, _) in enumerate(image_jobs):
                slots = self.descriptions_of.setdefault(key, [])
                self.place[image, index] = (key, len(slots))
                slots.append(None)
        self.left = {key: len(slots) for key, slots in self.descriptions_of.items()}
        self.started = time.perf_counter()
        self.worker = worker_name()
        self.descriptions = 0

    def answer(self, image: int, index: int, text: str, truncated: bool = False) -> None:
        """One prompt's answer; the pair is stored once it has all of its own."""
        key, place = self.place[image, index]
        if key not in self.descriptions_of:
            return  # the pair failed with another of its prompts
        entry = self.jobs[image][index][1]
        description = {"predicate": entry["predicate"], "similarity": entry["similarity"],
                       "generated_description": text}
        if truncated:
            description["truncated"] = True  # cut at max_new_tokens: said, not hidden
        self.descriptions_of[key][place] = description
        self.left[key] -= 1
        if self.left[key] == 0:
            self._store(key)

    def endpoint_answer(self, image: int, index: int, answer: EndpointAnswer) -> None:
        """One prompt's outcome through an endpoint: a failed prompt fails its pair, once."""
        if answer.attempts > 1:
            self.store.count(RELATIONS_STAGE, "endpoint_retries", answer.attempts - 1)
        if answer.text is not None:
            self.answer(image, index, answer.text, answer.truncated)
            return
        key, _ = self.place[image, index]
        if self.descriptions_of.pop(key, None) is not None:
            self.store.mark_failed(RELATIONS_STAGE, key, answer.failure)
            sample_progress(self.store, RELATIONS_STAGE)

    def _store(self, key: str) -> None:
        descriptions = self.descriptions_of.pop(key)
        result = relation_result(self.pending[key], descriptions)
        result["worker"] = self.worker
        # Seconds from the start of the task's generation to the pair's last description.
        result["seconds"] = round(time.perf_counter() - self.started, 4)
        self.store.mark_done(RELATIONS_STAGE, key, result)
        self.store.count(RELATIONS_STAGE, "descriptions_generated", len(descriptions))
        self.descriptions += len(descriptions)
        sample_progress(self.store, RELATIONS_STAGE)
