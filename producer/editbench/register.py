"""Registering an editbench run: the benchmark validated, its originals stored, its edit items
written (``producer/editbench/phases.py`` then drives it)."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import FIELD_SEPARATOR, Settings, SettingsError
from producer.editbench.external_edits import find_edits, mark_external_edits
from producer.run_identity import claim_run
from shared.editbench.data import PreparedBenchmark, field_images, prepare_benchmark
from shared.editbench.formats.fields import FieldMappingError, Reading, parse_field_mapping
from shared.editbench.data import SHAPES
from shared.editbench.prompt_manager import PLACEHOLDERS, PromptTemplateError, placeholders
from shared.editbench.rubric import REASONING_FILE, Rubric, RubricError, read_rubric_templates, rubric_from_templates
from shared.errors import RecordError
from shared.editbench.run_settings import EditbenchRunSettings, EditorLora
from shared import storage
from shared.artifacts import sha256_bytes
from shared.keys import content_digest, derive_run_id, inputs_digest
from shared.messages import EDIT_STAGE
from shared.redaction import without_password
from shared.run_artifacts import ArtifactStore
from shared.store import RunStore

log = logging.getLogger(__name__)


@dataclass
class EditbenchRun:
    store: RunStore
    keys_by_category: dict[str, list[str]]
    invalid: int
    external_edits: bool = False  # the edits were made elsewhere (--edits): no edit phase

    @property
    def run_id(self) -> str:
        return self.store.run_id

    @property
    def needs_workers(self) -> bool:
        return True  # what is pending is known only as the phases run


def prompts_digest(templates: dict[str, str]) -> str:
    """The judge's templates change scores, so they are part of the run id."""
    h = hashlib.sha256()
    for name, text in sorted(templates.items()):
        h.update(name.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()[:16]


def run_templates(settings: Settings) -> dict[str, str]:
    """The files of the judge's rubric the run is registered with: the producer's prompts directory."""
    try:
        return read_rubric_templates(settings.prompts, settings.judge_rubric,
                                     reasoning=settings.judge_mode == "reasoning")
    except (PromptTemplateError, RubricError, FileNotFoundError) as exc:
        raise SettingsError(str(exc)) from None


def check_template_fields(templates: dict[str, str], prepared: PreparedBenchmark,
                          optional: tuple[str, ...] = ()) -> None:
    """Every placeholder of the judge's templates is a value of the pairs, a field some record
    has or one the rubric declares ``optional``: a template naming another is refused, naming
    the template and the fields."""
    fields = set().union(*(pair.fields for pair in prepared.pairs))
    known = set(PLACEHOLDERS) | fields | set(optional)
    for name, text in sorted(templates.items()):
        if not name.endswith(".txt") or name == REASONING_FILE:  # the reasoning suffix fills {min}, {max} itself
            continue
        unknown = [p for p in placeholders(text) if p not in known]
        if unknown:
            raise SettingsError(
                f"judge template {name}: placeholder {{{unknown[0]}}} is no value of the pairs and no field "
                f"of the benchmark's records; the pairs have {', '.join(PLACEHOLDERS)}, the records "
                f"{', '.join(sorted(fields)) if fields else 'no fields'}"
                + (f", the rubric's optional fields {', '.join(optional)}" if optional else ""))


def read_judge_images(rubric: Rubric, prepared: PreparedBenchmark, data_root: str) -> dict[str, dict]:
    """pair key -> {field -> its images, or why they cannot be read}, for the record fields whose
    images the rubric's judge is shown: such a pair fails alone when it is judged, naming the file."""
    names = sorted({s.field for c in rubric.criteria for s in c.images if s.kind == "field"})
    found: dict[str, dict] = {}
    for pair in prepared.pairs:
        for name in names:
            try:
                images = field_images(pair, name, data_root)
            except RecordError as exc:
                found.setdefault(pair.key, {})[name] = str(exc)
                continue
            if images:
                found.setdefault(pair.key, {})[name] = images
    return found


def _stored_judge_images(artifacts: ArtifactStore, images: dict) -> dict[str, dict]:
    """The item's record of its judge images: stored paths by field, and problems by field."""
    paths = {name: [artifacts.put_original(i.data, i.extension)[0] for i in found]
             for name, found in images.items() if not isinstance(found, str)}
    problems = {name: found for name, found in images.items() if isinstance(found, str)}
    return {**({"judge_images": paths} if paths else {}), **({"judge_image_problems": problems} if problems else {})}


def run_settings(settings: Settings, templates: dict[str, str]) -> EditbenchRunSettings:
    """The settings an editbench run is registered with, ``templates`` those of its judge."""
    endpoint = settings.judge_backend == "endpoint"
    return EditbenchRunSettings(
        judge_batch_size=settings.judge_batch_size, workers_per_gpu=settings.workers_per_gpu,
        prompts_dir=str(settings.prompts), prompt_templates=templates,
        # Its password is not stored: the workers' own setting gives it.
        judge_endpoint_url=without_password(settings.judge_endpoint_url),
        judge_endpoint_api_key_env=settings.judge_endpoint_api_key_env,
        editor_model=settings.editor_model, editor_loras=editor_loras(settings),
        judge_model=settings.judge_model, model_revision=settings.model_revision, dtype=settings.dtype,
        edit_steps=settings.edit_steps, edit_size=settings.edit_size, edit_guidance=settings.edit_guidance,
        edit_negative_prompt=settings.edit_negative_prompt, seed=settings.seed,
        judge_rubric=settings.judge_rubric, prompts=prompts_digest(templates), judge_mode=settings.judge_mode,
        judge_reasoning_tokens=settings.judge_reasoning_tokens if settings.judge_mode == "reasoning" else 0,
        judge_backend=settings.judge_backend,
        # Where the endpoint is (its URL, its key's variable) is the latest command's; what it
        # serves and whether its logprobs are asked for change scores.
        judge_endpoint_model=settings.judge_endpoint_model if endpoint else "",
        judge_endpoint_logprobs=settings.judge_endpoint_logprobs if endpoint else False,
        edit_fp8=bool(settings.edit_fp8), edit_step_cache=float(settings.edit_step_cache))


def result_settings(settings: Settings, templates: dict[str, str]) -> dict[str, Any]:
    """The settings that change edited images or scores: part of the run id and identity."""
    return run_settings(settings, templates).identity()


def editor_loras(settings: Settings) -> tuple[EditorLora, ...]:
    """Each LoRA of the settings by absolute path, scale and content digest."""
    return tuple(EditorLora(path=str(Path(path).resolve()), scale=scale, digest=content_digest(Path(path)))
                 for path, scale in settings.loras)


def benchmark_reading(settings: Settings) -> Reading:
    """How the settings say to read the benchmark; a bad --field is a SettingsError."""
    specs = [spec for spec in settings.benchmark_fields.split(FIELD_SEPARATOR) if spec.strip()]
    try:
        fields = parse_field_mapping(specs)
    except FieldMappingError as exc:
        raise SettingsError(str(exc)) from None
    images = settings.benchmark_images
    if images and not storage.is_url(images):
        images = str(Path(images).resolve())
    return Reading(format=settings.benchmark_format, fields=fields, images=images)


# What an editbench run is: a run name with other values of these is another run.
# ``benchmark_reading`` is stored only for a benchmark read otherwise than by default (a
# format named or detected, a field mapping): runs of evalfleet's own shapes keep their ids.
# ``edits`` (their layout and digests) only for a run of edits made elsewhere.
IDENTITY = ("inputs", "benchmark_reading", "edits", *EditbenchRunSettings.identity_keys())


def reading_identity(prepared: PreparedBenchmark) -> dict[str, Any]:
    """What of the reading changes the pairs read from the same files (empty for evalfleet's own
    shapes read by default)."""
    native = prepared.shape not in SHAPES
    reading = {**({"format": prepared.shape} if native else {}), **prepared.reading}
    return {"benchmark_reading": reading} if reading else {}


def register_editbench(settings: Settings, store_client, benchmark: str | Path,
                       run_name: str | None = None, restart: bool = False) -> EditbenchRun:
    """Validate the benchmark, store the originals, register the run and its edit items.

    Raises InputFileError before anything is registered if the file is unusable, and
    RunMismatchError if ``run_name`` is a run of another benchmark or other settings.
    """
    prepared = prepare_benchmark(benchmark, settings.data_root, benchmark_reading(settings))
    templates = run_templates(settings)
    rubric = rubric_from_templates(settings.judge_rubric, templates)
    check_template_fields(templates, prepared, rubric.optional_fields)
    judge_images = read_judge_images(rubric, prepared, settings.data_root)
    # Images given by path are content of the benchmark too: another image is another run.
    # Their digests are of the bytes read (a URL's object is read once, here).
    judge_files = [i for found in judge_images.values() for images in found.values()
                   if not isinstance(images, str) for i in images if i.file]
    inputs = [*prepared.input_files, *prepared.image_files, *(i.file for i in judge_files)]
    digests = [*prepared.input_digests, *prepared.image_digests,
               *(sha256_bytes(i.data) for i in judge_files)]
    run = run_settings(settings, templates)
    reading = reading_identity(prepared)
    edits = find_edits(settings, prepared.shape, prepared.pairs)
    external = edits.identity() if edits else {}
    run_id = run_name or derive_run_id("editbench", inputs, {**run.identity(), **reading, **external}, digests)
    store = RunStore(store_client, run_id)
    artifacts = ArtifactStore(settings.artifact_location, run_id)
    claim_run(store, {"job": "editbench", "run_id": run_id, "created": time.time(),
                      "benchmark": without_password(str(benchmark)), "benchmark_shape": prepared.shape,
                      "inputs": inputs_digest(inputs, digests), **reading,
                      "categories": prepared.categories, **run.record(),
                      **(edits.record() if edits else {})},
              IDENTITY, restart, artifacts.dir)
    items: dict[str, dict[str, Any]] = {}
    keys_by_category: dict[str, list[str]] = {c: [] for c in prepared.categories}
    for order, pair in enumerate(prepared.pairs):
        stored = [artifacts.put_original(image.data, image.extension) for image in pair.images]
        (original, digest), *others = stored
        items[pair.key] = {"category": pair.category, "pair_id": pair.pair_id, "order": order,
                           "original_path": original, "original_digest": digest,
                           **({"original_description": pair.original_description}
                              if pair.original_description is not None else {}),
                           "edit_instruction": pair.edit_instruction, "fields": pair.fields,
                           "edited_path": artifacts.edited_path(pair.category, pair.pair_id)}
        if others:  # several input images: the first is original_path, all are here in order
            items[pair.key]["original_paths"] = [location for location, _ in stored]
        items[pair.key].update(_stored_judge_images(artifacts, judge_images.get(pair.key, {})))
        keys_by_category[pair.category].append(pair.key)
    store.add_items(EDIT_STAGE, items)
    store.add_items(EDIT_STAGE, {key: {"invalid": True} for key in prepared.failures})
    for key, reason in prepared.failures.items():
        store.mark_failed(EDIT_STAGE, key, reason)
        log.warning("not enqueued: %s", reason)
    if edits:
        mark_external_edits(store, items, edits)
    return EditbenchRun(store, keys_by_category, invalid=len(prepared.failures), external_edits=edits is not None)
