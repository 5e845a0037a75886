"""Per-process worker state, created lazily in each prefork child (after the fork).

CUDA must not be initialized in the parent: the first task a child runs loads the
model, and the child keeps it for the tasks after.

Two small records let ``python -m producer status`` show what the fleet is doing:

- a heartbeat after every model acquire: hash ``evalfleet:workers``, field
  ``<host>:<pid>`` -> {"resident": [...], "device", "node", "at"};
- a progress sample after every task: list ``evalfleet:<run>:<stage>:samples`` of
  [redis time, done, failed], newest first, capped, from which status derives a rate.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import redis
from celery import current_task

from shared.editbench.approximate import approximate_modes
from shared.messages import EDIT_STAGE
from shared.store import WORKER_OUTAGE_SECONDS, WORKERS_KEY, RunStore, connect
from workers.celery_app import settings
from workers.errors import PermanentError

if TYPE_CHECKING:
    import torch

    from shared.editbench.prompt_manager import PromptManager
    from shared.editbench.rubric import Rubric
    from workers.residency import ResidencyPool

log = logging.getLogger(__name__)

# Share of the memory the weights leave that the relations decoder's KV cache may hold.
DECODER_CACHE_FRACTION = 0.9

@functools.cache
def _store_client():
    return connect(settings.store_url, outage_seconds=WORKER_OUTAGE_SECONDS)


def run_store(run_id: str) -> RunStore:
    return RunStore(_store_client(), run_id)


@functools.cache
def residency() -> "ResidencyPool":
    """This process's pool: which of its models are on the device, within the memory budget."""
    from workers.models.loading import pick_device
    from workers.residency import ResidencyPool, default_budget_bytes

    device = pick_device(settings.device)
    budget = default_budget_bytes(device, settings.workers_per_gpu, settings.memory_budget_gb)
    log.info("residency pool on %s with a budget of %.2f GiB", device, budget / 2**30)
    return ResidencyPool(device, budget)


# Model name -> the load function of its latest caller. The pool calls it until a load
# succeeds, so a failed load reports the setting of the task that asked this time (the
# relations model and the judge may name the same model).
_loads: dict[str, Callable[[], tuple[Any, dict]]] = {}


def _resident(store: RunStore, name: str, load: Callable[[], tuple[Any, dict]]) -> Any:
    """The model ``name`` made resident (loading or swapping it in); swaps are recorded in the run."""
    pool = residency()
    if name not in _loads:
        loaded: dict[str, Any] = {}

        def loader() -> dict:
            loaded["handle"], modules = _loads[name]()
            return modules

        pool.register(name, loader, handle=lambda: loaded["handle"])
    _loads[name] = load
    before = len(pool.swaps)
    started = time.perf_counter()
    handle = _acquire(pool, name)
    seconds = time.perf_counter() - started
    if len(pool.swaps) > before or seconds > LOADING_SECONDS_COUNTED:
        store.add_worker_time(worker_name(), "loading", seconds)
    for swap in pool.swaps[before:]:
        store.add_swap({"worker": worker_name(), "from": swap.evicted, "to": swap.loaded,
                        "dropped": swap.dropped, "bytes": swap.bytes_moved,
                        "seconds": round(swap.seconds, 4), "at": time.time()})
    _heartbeat(pool)
    return handle


# Model name -> why it cannot be loaded, for the reasons that stay true (an editor of an
# unsupported family, a LoRA that does not fit it): every later item fails with the same
# reason at once instead of loading the base model again.
_unloadable: dict[str, str] = {}


# A model already resident is acquired in microseconds: only real loads and swaps count as
# the worker's loading time.
LOADING_SECONDS_COUNTED = 0.05


def _acquire(pool: "ResidencyPool", name: str) -> Any:
    from shared.editbench.editor_families import UnsupportedEditorError
    from workers.editing.approximate import ApproximateModeError
    from workers.editing.loras import LoraMismatchError
    from workers.models.loading import ModelNotFoundError
    from workers.residency import BudgetExceededError

    if name in _unloadable:
        raise PermanentError(_unloadable[name])
    try:
        return pool.acquire(name)
    except (UnsupportedEditorError, LoraMismatchError, ApproximateModeError) as exc:
        _unloadable[name] = str(exc)
        raise PermanentError(str(exc)) from exc
    except (ModelNotFoundError, BudgetExceededError) as exc:
        # A missing model stays missing and a too-large one never fits: retries only
        # delay the failure. The message names the setting to fix.
        raise PermanentError(str(exc)) from exc


def _heartbeat(pool: "ResidencyPool") -> None:
    """Tell ``producer status`` which models this process holds (never fails a task)."""
    request = current_task.request if current_task else None
    record = {"resident": pool.resident, "device": str(pool.device), "at": time.time(),
              "node": getattr(request, "hostname", None)}
    try:
        _store_client().hset(WORKERS_KEY, worker_name(), json.dumps(record))
    except redis.RedisError as exc:
        log.warning("could not write the worker heartbeat: %s", exc)


def run_setting(store: RunStore, meta: dict[str, Any], name: str) -> Any:
    """A result-changing setting of the run: the run's, never this worker's own.

    A run registered without it (by an older evalfleet) cannot be honoured: its items
    fail at once, saying how to go on.
    """
    try:
        return meta[name]
    except KeyError:
        raise PermanentError(
            f"run {store.run_id!r} was registered without the setting {name!r} (by an older "
            "evalfleet), so the workers cannot tell what it asked for: start it over with the "
            "same command and --restart") from None


def run_dtype(store: RunStore, meta: dict[str, Any]) -> "torch.dtype":
    """The torch dtype the run asked for, on this worker's device; refused if the device lacks it."""
    import torch

    from workers.models.loading import pick_device, pick_dtype

    device = pick_device(settings.device)
    try:
        dtype = pick_dtype(run_setting(store, meta, "dtype"), device)
    except ValueError as exc:
        raise PermanentError(f"run {store.run_id!r}: {exc}") from None
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PermanentError(f"run {store.run_id!r} asks for bfloat16, which {device} "
                             f"({torch.cuda.get_device_name(device)}) does not support: start it "
                             "over with EVALFLEET_DTYPE=float16 and --restart, or use other GPUs")
    return dtype


def _model_name(kind: str, ref: str, revision: str, dtype: Any) -> str:
    """The residency pool's name for a model; revision and dtype are part of it, since two
    runs may ask for different ones of one model."""
    return f"{kind} {ref}" + (f"@{revision}" if revision else "") + f" {str(dtype).removeprefix('torch.')}"


def _load_kwargs(ref: str, kind: str, dtype: Any) -> dict[str, Any]:
    """Weights load on the CPU in the run's dtype; the residency pool moves them."""
    import torch

    from workers.models.loading import resolve_model_path

    return {"ref": resolve_model_path(ref, settings.models_dir, kind=kind),
            "dtype": dtype, "device": torch.device("cpu")}


def vlm(store: RunStore, meta: dict[str, Any], ref: str, setting: str) -> tuple[Any, Any, str]:
    """(processor, model, its residency pool name) of a Qwen3-VL, shared by the relations
    generator and the judge.

    ``setting`` names the variable that chose ``ref``, for the error if it cannot be loaded.
    """
    from workers.models.loading import load_vlm

    revision, dtype = meta.get("model_revision", ""), run_dtype(store, meta)

    def load() -> tuple[Any, dict]:
        kwargs = _load_kwargs(ref, "qwen3-vl", dtype)
        processor, model = load_vlm(kwargs.pop("ref"), revision=revision, setting=setting, **kwargs)
        return (processor, model), {"model": model}

    name = _model_name("vlm", ref, revision, dtype)
    processor, model = _resident(store, name, load)
    return processor, model, name


def relation_generator(store: RunStore, meta: dict[str, Any]):
    """A generator with the run's settings over this process's copy of the run's model."""
    from workers.models.loading import RELATIONS_MODEL_SETTING
    from workers.relations.generator import RelationGenerator

    processor, model, name = vlm(store, meta, meta["relations_model"], RELATIONS_MODEL_SETTING)
    pool = residency()
    # The decoder's cache may take what the weights leave of the budget, less room for the
    # step's activations and logits; the pool counts it and frees it when the model leaves.
    cache_bytes = int(pool.room_for_working(name) * DECODER_CACHE_FRACTION)
    generator = RelationGenerator(processor, model, max_new_tokens=int(meta["max_new_tokens"]),
                                  temperature=float(meta["temperature"]),
                                  max_batch=int(meta.get("max_batch", 512)),
                                  cache_bytes=cache_bytes)
    pool.set_working_bytes(name, cache_bytes, release=generator.decoder.release)
    return generator


def judge_for(store: RunStore):
    """The run's judge: one ``score(rows)`` per criterion row, JudgeScore or JudgeFailure each."""
    from workers.judging.judge import Judge
    from workers.models.loading import JUDGE_MODEL_SETTING, experts_implementation

    meta = store.meta()
    rubric = run_rubric(store).rubric
    reasoning_tokens = int(run_setting(store, meta, "judge_reasoning_tokens"))
    if run_setting(store, meta, "judge_backend") == "endpoint":
        # No model and no device: the score phase of an endpoint judge needs no GPU.
        return _endpoint_judge(meta["judge_endpoint_url"], meta["judge_endpoint_model"],
                               meta.get("judge_endpoint_api_key_env", ""),
                               bool(meta["judge_endpoint_logprobs"]), rubric.values, reasoning_tokens)
    if store.stage_closed(EDIT_STAGE):
        # The phase controller says the run's last edit has finished: if the editor must
        # leave the device for the judge, drop it rather than pin a host copy of it.
        residency().retire(editor_model_name(meta, run_dtype(store, meta)))
    processor, model, _ = vlm(store, meta, meta["judge_model"], JUDGE_MODEL_SETTING)
    store.add_judge_experts(experts_implementation(model))
    # The criteria of a pair go in one forward pass: the batch is pairs x criteria rows.
    return Judge(processor, model, batch_size=int(meta["judge_batch_size"]) * len(rubric.criteria),
                 values=rubric.values, reasoning_tokens=reasoning_tokens)


@functools.lru_cache(maxsize=4)
def _endpoint_judge(url: str, model: str, api_key_env: str, logprobs: bool, values: tuple[int, ...],
                    reasoning_tokens: int):
    """One client per endpoint and process (its connection pool is reused across tasks)."""
    from workers.judging.endpoint import EndpointJudge

    try:
        return EndpointJudge(url, model, api_key_env=api_key_env, logprobs=logprobs, values=values,
                             reasoning_tokens=reasoning_tokens,
                             concurrency=settings.judge_endpoint_concurrency,
                             timeout_seconds=settings.judge_endpoint_timeout_seconds,
                             max_retries=settings.judge_endpoint_max_retries)
    except KeyError as exc:
        raise PermanentError(str(exc.args[0])) from None


def editor_for(store: RunStore):
    """An editor with the run's settings (its family's defaults for those left at 0) over
    this process's copy of the run's edit pipeline and LoRAs."""
    from config import TINY_EDITORS
    from workers.editing.approximate import apply_approximate_modes
    from workers.editing.compile import compile_editor_transformer
    from workers.editing.editor import Editor, pipeline_modules
    from workers.editing.speed import speed_up_editor
    from workers.models.loading import EDITOR, load_image_edit_pipeline, pick_device

    meta = store.meta()
    ref, revision, dtype = meta["editor_model"], meta.get("model_revision", ""), run_dtype(store, meta)
    loras = run_setting(store, meta, "editor_loras")

    def load() -> tuple[Any, dict]:
        kwargs = _load_kwargs(ref, EDITOR, dtype)
        device = pick_device(settings.device)
        pipeline = load_image_edit_pipeline(kwargs.pop("ref"), revision=revision, loras=loras, **kwargs)
        speed_up_editor(pipeline)
        # The run's approximate modes (none unless its command asked), before the compile.
        apply_approximate_modes(pipeline, bool(meta.get("edit_fp8", False)),
                                float(meta.get("edit_step_cache", 0.0)), device)
        compile_editor_transformer(pipeline, settings, device)
        return pipeline, pipeline_modules(pipeline)

    pipeline = _resident(store, editor_model_name(meta, dtype), load)
    family = Editor.family_of(pipeline)
    # Not named settings: load() above reads this worker's settings.
    edit_settings = family.settings(steps=int(meta["edit_steps"]), size=int(meta["edit_size"]),
                                    guidance=float(run_setting(store, meta, "edit_guidance")),
                                    negative_prompt=meta["edit_negative_prompt"],
                                    tiny=ref in TINY_EDITORS)
    return Editor(pipeline, edit_settings)


def editor_model_name(meta: dict[str, Any], dtype: Any) -> str:
    """The residency pool's name for the run's editor: its LoRAs (by digest) are part of it,
    since runs with other LoRAs over one base need other weights."""
    loras = "".join(f" +lora {lora['digest'][:12]}x{lora['scale']:g}" for lora in meta.get("editor_loras", []))
    # Approximate modes change the weights (FP8) or the hooks (step cache): another model.
    modes = "".join(f" +{mode}" for mode in approximate_modes(meta))
    return _model_name("editor", meta["editor_model"], meta.get("model_revision", ""), dtype) + loras + modes


@dataclass(frozen=True)
class RunRubric:
    rubric: "Rubric"
    prompts: dict[str, "PromptManager"]  # criterion -> its templates
    reasoning_suffix: str | None  # appended to each user prompt in the reasoning mode


def run_rubric(store: RunStore) -> RunRubric:
    """The rubric and templates stored with the run (the producer's), not this worker's files."""
    meta = store.meta()
    return _run_rubric(store.run_id, meta.get("prompts_dir", ""), run_setting(store, meta, "judge_rubric"),
                       run_setting(store, meta, "judge_mode"),
                       json.dumps(run_setting(store, meta, "prompt_templates"), sort_keys=True))


@functools.lru_cache(maxsize=8)
def _run_rubric(run_id: str, prompts_dir: str, name: str, mode: str, templates_json: str) -> RunRubric:
    from shared.editbench.rubric import RubricError, criterion_prompts, reasoning_suffix, rubric_from_templates

    templates = json.loads(templates_json)
    try:
        rubric = rubric_from_templates(name, templates)
        suffix = reasoning_suffix(rubric, templates) if mode == "reasoning" else None
    except RubricError as exc:
        raise PermanentError(f"run {run_id!r}: {exc}") from None
    return RunRubric(rubric, criterion_prompts(rubric, Path(prompts_dir), templates), suffix)


@functools.cache
def device_name() -> str:
    """host/device, e.g. ``gpu-7/cuda:GPU-3f2c...`` (so the report can count GPUs) or ``host/cpu``."""
    from workers.models.loading import pick_device

    device = pick_device(settings.device)
    if device.type == "cuda":
        import torch

        props = torch.cuda.get_device_properties(device)
        return f"{socket.gethostname()}/cuda:{getattr(props, 'uuid', device.index)}"
    return f"{socket.gethostname()}/cpu"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
