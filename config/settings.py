"""All of evalfleet's settings, in one place.

Every value has a default that works on a laptop and can be overridden by an
environment variable named ``EVALFLEET_<FIELD>`` (upper case), e.g.
``EVALFLEET_BROKER_URL=redis://:secret@redis-host:6379/0``. Nothing else in the
project reads ``os.environ`` for its own settings.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from config.bench_token_budgets import TokenBudgets, parse_token_budgets

ENV_PREFIX = "EVALFLEET_"

# The model name that means "build (once) and use the tiny random model".
TINY_MODEL = "tiny"
# Editor names that build (once) and use a tiny random edit pipeline, and its diffusers class.
TINY_EDITORS = {
    TINY_MODEL: "QwenImageEditPipeline",
    "tiny-qwen-image-edit-plus": "QwenImageEditPlusPipeline",
    "tiny-flux-kontext": "FluxKontextPipeline",
}
# Separates the LoRAs of EVALFLEET_EDITOR_LORAS; each is PATH or PATH:SCALE.
LORA_SEPARATOR = ","
# Separates the NAME=SOURCE mappings of EVALFLEET_BENCHMARK_FIELDS.
FIELD_SEPARATOR = ","
# The largest LoRA scale, either sign (a negative scale subtracts the LoRA's direction).
LORA_SCALE_MAX = 100

# What a worker uses when no broker URL is configured: the usual single-host Redis.
DEFAULT_BROKER_URL = "redis://localhost:6379/0"

# Seconds between a task's soft time limit (it fails its items) and its hard one (killed).
TIME_LIMIT_GRACE_SECONDS = 30

JUDGE_MODES = ("score", "reasoning")
JUDGE_BACKENDS = ("local", "endpoint")
RELATIONS_BACKENDS = ("local", "endpoint")
# The settings' names of the two endpoints (EVALFLEET_<NAME>_URL, ..._MODEL, ...).
JUDGE_ENDPOINT, RELATIONS_ENDPOINT = "JUDGE_ENDPOINT", "RELATIONS_ENDPOINT"

# URL schemes a broker or result URL may have.
REDIS_SCHEMES = ("redis", "rediss", "unix")


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    # --- broker and stores ---------------------------------------------------
    # Empty broker URL: the one-command mode starts an embedded redis-server.
    broker_url: str = ""
    # Where results and run state live; empty means "the broker's Redis".
    result_url: str = ""
    work_dir: Path = Path("evalfleet-work")
    # Empty means <work_dir>/artifacts. An object-store URL (s3://bucket/prefix) puts a run's
    # originals and edits there, for workers on hosts that share no filesystem (README, Fleet).
    artifact_root: str = ""
    # Where a worker keeps the objects it fetched from an object-store artifact root, so an
    # image many tasks of one host read is fetched once; empty means <work_dir>/object-cache.
    # At most object_cache_mb megabytes (the least recently used go first); 0: no cache.
    object_cache_dir: str = ""
    object_cache_mb: float = 1024.0
    # Free space (MB) `run` needs on the work directory's disk (and the artifact root's) to
    # start: below it the run is refused (exit 3) rather than fail its writes part-way. 0: no check.
    min_free_mb: float = 100.0
    # Where tiny models are built; empty means <work_dir>/models.
    model_cache: str = ""
    # Seconds before Redis hands an unacknowledged message to another worker.
    # Must exceed the longest task (see README, Reliability).
    visibility_timeout: int = 3600
    # When set, every image path of the relations input must resolve (symbolic links
    # and ".." followed) to a place under this directory; others are refused. Empty:
    # no restriction.
    data_root: str = ""

    # --- queues --------------------------------------------------------------
    queue_relations: str = "relations"
    queue_edit: str = "edit"
    queue_score: str = "score"

    # --- models --------------------------------------------------------------
    # A hub id (Qwen/Qwen3-VL-8B-Instruct), a local directory, or "tiny".
    relations_model: str = TINY_MODEL
    model_revision: str = ""
    # "auto": bfloat16 on a GPU, float32 on the CPU.
    dtype: str = "auto"
    # "auto": cuda when a GPU is visible, else cpu.
    device: str = "auto"

    # --- editbench job -----------------------------------------------------------
    # A diffusers edit pipeline of a supported family (shared/editbench/editor_families.py): a hub id
    # (Qwen/Qwen-Image-Edit-2509), a local directory, or a tiny one (TINY_EDITORS).
    editor_model: str = TINY_MODEL
    # LoRAs applied on top of the editor: PATH[:SCALE] (scale 1 by default), separated by
    # LORA_SEPARATOR; each a local .safetensors file or a directory holding one.
    editor_loras: str = ""
    # The judge, a Qwen3-VL: a hub id (Qwen/Qwen3-VL-30B-A3B-Instruct), a local directory, or "tiny".
    judge_model: str = TINY_MODEL
    # 0 means the editor family's default: its steps (Qwen-Image-Edit 50, -Plus 40, FLUX.1
    # Kontext 28) and guidance (true CFG 4.0 for the Qwen families, guidance 2.5 for Kontext),
    # a 1024x1024-pixel area; a tiny editor takes 2 steps at 128x128 (the laptop demo is quick).
    edit_steps: int = 0
    edit_size: int = 0
    edit_guidance: float = 0.0
    # Used by the families with true classifier-free guidance (the Qwen ones) when guidance > 1.
    edit_negative_prompt: str = " "
    # How the benchmark is read (README, Public benchmarks): its format, "" to detect it (gedit,
    # kris, imgedit, rise; records: any file of records read through the field mapping);
    # NAME=SOURCE field mappings separated by FIELD_SEPARATOR (category=task_type); the folder
    # its relative image paths are under ("" = the layout's own: beside the file).
    benchmark_format: str = ""
    benchmark_fields: str = ""
    benchmark_images: str = ""
    # Edits made elsewhere (README, Public benchmarks): a folder of edited images judged instead
    # of editing ("" = edit with editor_model), and its layout ("" = the benchmark's own format's,
    # else flat; producer/editbench/edit_layouts.py).
    edits_dir: str = ""
    edits_layout: str = ""
    # Pairs scored in one judge batch.
    judge_batch_size: int = 4
    # GPU memory (GiB) the models of one worker process may hold; 0 means
    # device memory x 0.9 / workers per GPU (host memory on a CPU-only machine).
    memory_budget_gb: float = 0.0
    # Per-category judge prompt templates; empty means config/prompts.
    prompts_dir: str = ""
    # The judge's rubric: "default" (one 0-10 score), or a folder <prompts_dir>/rubrics/<name>/
    # ("viescore", "kris" ship with evalfleet).
    judge_rubric: str = "default"
    # "score": read each criterion's score from the first answer token; "reasoning": the
    # judge writes a rationale first (at most judge_reasoning_tokens tokens), then "Score: N".
    judge_mode: str = "score"
    judge_reasoning_tokens: int = 256
    # "local": the Qwen3-VL of judge_model in the worker; "endpoint": an OpenAI-compatible
    # chat-completions server (vLLM, SGLang, a hosted model): no GPU and no judge model in the worker.
    judge_backend: str = "local"
    judge_endpoint_url: str = ""  # e.g. http://vllm-host:8000/v1
    judge_endpoint_model: str = ""  # the served model's name, e.g. Qwen/Qwen2.5-VL-72B-Instruct
    # The NAME of the environment variable that holds the API key (the key itself is never
    # stored, logged or printed); empty: no key (a local server).
    judge_endpoint_api_key_env: str = ""
    # Ask for logprobs/top_logprobs: the score is then the expectation over the scale's tokens.
    judge_endpoint_logprobs: bool = True
    # Requests one worker process has in flight at once.
    judge_endpoint_concurrency: int = 4
    # Bounds each request as a whole, however slowly the server sends its answer.
    judge_endpoint_timeout_seconds: float = 120.0
    # Retries of a request on 408/409/429/5xx, lost connections and timeouts, with exponential
    # back-off that honours Retry-After (workers/endpoints/chat_requests.py); then the item fails.
    judge_endpoint_max_retries: int = 4
    # Compile the editor's transformer (regional compilation, one block compiled and reused
    # by all 60): "auto" on a CUDA device (pays back within the first edits, bench/RESULTS.md,
    # "Editbench at real size"), "on", "off". Speed only: a run's results do not depend on it beyond bf16
    # rounding.
    editor_compile: str = "auto"
    # Inductor's compile cache, shared by the worker processes of a host so only the first
    # one compiles; empty means <work_dir>/inductor-cache. Best on a local disk.
    inductor_cache_dir: str = ""
    # Approximate edit modes: faster, NOT the same images; off by default, part of the run's
    # identity, named in the report; `compare` refuses to set such a run against an exact
    # one unless given --allow-approximate. Their quality cost is not measured here.
    # FP8 matrix products in the editor's transformer blocks (torchao; a GPU with float8
    # tensor cores: Ada, Hopper or newer).
    edit_fp8: bool = False
    # A step cache (diffusers' First Block Cache): a pass whose first block's output moved by
    # less than this (relative mean absolute change) skips the other blocks; 0 is off.
    # Typical values 0.05 to 0.2: higher skips more.
    edit_step_cache: float = 0.0

    # --- relations job (the seed scripts' defaults: README, Layout, Baselines) ---
    top_k: int = 10
    # The seed scripts' BATCH_SIZE, accepted (and stored in the run's meta) for compatibility: the
    # relations engine's batch is max_batch, and nothing reads this.
    batch_size: int = 8
    # The relations engine's most rows at once; fewer when their KV cache would not fit the
    # memory left after the weights (EVALFLEET_MEMORY_BUDGET_GB).
    max_batch: int = 512
    max_new_tokens: int = 512
    temperature: float = 0.1
    # "local": relations_model on this worker's device; "endpoint": each prompt is a chat
    # completion of an OpenAI-compatible server (vLLM, SGLang, a hosted model) serving
    # relations_endpoint_model: no GPU and no model in the worker. The endpoint's settings
    # mean what the judge endpoint's of the same names mean.
    relations_backend: str = "local"
    relations_endpoint_url: str = ""  # e.g. http://vllm-host:8000/v1
    relations_endpoint_model: str = ""  # the served model's name, e.g. Qwen/Qwen3-VL-8B-Instruct
    relations_endpoint_api_key_env: str = ""
    relations_endpoint_concurrency: int = 8
    relations_endpoint_timeout_seconds: float = 300.0
    relations_endpoint_max_retries: int = 4
    seed: int = 0
    # BENCHMARKS ONLY, never on in a real run (config/bench_token_budgets.py): each local
    # relations prompt ends at a token budget drawn from this distribution, e.g.
    # lognormal:median=140,sigma=0.6,cap=512,seed=0, as if the model had emitted eos there
    # (random weights never do). Empty: off. The run records it (its identity and report).
    bench_token_budgets: str = ""
    # Prompts (pairs x top-K) per task: small images share a task up to this many, an image
    # with more is split into tasks of at most this many.
    task_prompts: int = 1024

    # --- workers ---------------------------------------------------------------
    workers_per_gpu: int = 1
    # A task that raises a transient error (CUDA out of memory, Redis unreachable) is
    # retried this many times, then its items are recorded as failed.
    task_max_retries: int = 3
    # First back-off in whole seconds (Celery's retry_backoff); doubles on every retry.
    retry_backoff_seconds: int = 2
    # Soft time limit of one task (seconds): past it the task fails its unfinished items,
    # so nothing blocks forever. The hard limit (the process is killed) is
    # TIME_LIMIT_GRACE_SECONDS later. A full-size edit takes ~40 s on an H200 (bench/RESULTS.md,
    # "Edits near the GPU's limit"), a big relations task minutes; the visibility timeout must
    # exceed the hard limit.
    task_time_limit: int = 1800

    # --- producer ----------------------------------------------------------------
    poll_interval_seconds: float = 0.5
    # A stage that has not moved for this long while its queue is empty and no worker
    # holds its tasks will never finish: the producer says so and fails what is left.
    stall_seconds: float = 60.0

    @property
    def task_hard_time_limit(self) -> int:
        # A short limit (tests) gets a grace as short as itself.
        return self.task_time_limit + min(TIME_LIMIT_GRACE_SECONDS, self.task_time_limit)

    @property
    def artifacts_in_store(self) -> bool:
        """The artifact root is an object-store URL, not a folder."""
        return "://" in self.artifact_root

    @property
    def artifact_location(self) -> str:
        """The artifact root as a location (``shared/storage.py``): the URL, or the folder."""
        return self.artifact_root if self.artifacts_in_store else str(self.artifacts)

    @property
    def artifacts(self) -> Path:
        """The artifact root's folder (not for an object-store root: artifact_location)."""
        return Path(self.artifact_root) if self.artifact_root else self.work_dir / "artifacts"

    @property
    def object_cache(self) -> Path:
        return Path(self.object_cache_dir) if self.object_cache_dir else self.work_dir / "object-cache"

    @property
    def models_dir(self) -> Path:
        return Path(self.model_cache) if self.model_cache else self.work_dir / "models"

    @property
    def inductor_cache(self) -> Path:
        return Path(self.inductor_cache_dir) if self.inductor_cache_dir else self.work_dir / "inductor-cache"

    @property
    def prompts(self) -> Path:
        return Path(self.prompts_dir) if self.prompts_dir else Path(__file__).parent / "prompts"

    @property
    def loras(self) -> tuple[tuple[str, float], ...]:
        """(path, scale) of each LoRA of ``editor_loras``, in order."""
        return tuple(parse_lora(text.strip()) for text in self.editor_loras.split(LORA_SEPARATOR)
                     if text.strip())

    @property
    def token_budgets(self) -> TokenBudgets | None:
        """The benchmark-only token budgets (``bench_token_budgets``), or None when off."""
        return parse_token_budgets(self.bench_token_budgets)

    @property
    def broker(self) -> str:
        return self.broker_url or DEFAULT_BROKER_URL

    @property
    def store_url(self) -> str:
        return self.result_url or self.broker

    def replace(self, **changes: object) -> "Settings":
        return dataclasses.replace(self, **changes)


def parse_lora(text: str) -> tuple[str, float]:
    """``PATH`` or ``PATH:SCALE`` -> (path, scale); the scale defaults to 1."""
    path, colon, scale = text.rpartition(":")
    if not colon:
        return text, 1.0
    try:
        value = float(scale)
    except ValueError:
        return text, 1.0  # a colon inside the path, no scale
    if not path or not math.isfinite(value) or abs(value) > LORA_SCALE_MAX:
        raise SettingsError(f"LoRA {text!r}: give PATH or PATH:SCALE with a finite SCALE "
                            f"between -{LORA_SCALE_MAX} and {LORA_SCALE_MAX}")
    return path, value


def shown_number(value: float) -> str:
    """A number for a message: an integer of hundreds of digits is cut."""
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:20]}... ({len(text)} digits)"


def _convert(name: str, raw: str, target: type) -> object:
    try:
        if target is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if target is Path:
            return Path(raw)
        return target(raw)
    except ValueError:
        raise SettingsError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {target.__name__}"
        ) from None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from the defaults and ``EVALFLEET_*`` variables."""
    environ = os.environ if environ is None else environ
    hints = {"str": str, "int": int, "float": float, "bool": bool, "Path": Path}
    values: dict[str, object] = {}
    for f in fields(Settings):
        raw = environ.get(ENV_PREFIX + f.name.upper())
        if raw is not None:
            values[f.name] = _convert(f.name, raw, hints[str(f.type)])
    settings = Settings(**values)
    validate_settings(settings)
    return settings


# EVALFLEET_ variables that are not settings on purpose: the container's user ids
# (docker-compose.yml, Dockerfile).
NOT_SETTINGS = frozenset({f"{ENV_PREFIX}UID", f"{ENV_PREFIX}GID"})
# Settings that were removed, and what a user who still sets one should know instead.
RETIRED = {
    f"{ENV_PREFIX}RELATIONS_ENGINE": "the slot decoder was retired (bench/slot_decoder.py keeps it as "
                                     "the benchmarks' baseline); the paged engine is the relations "
                                     "job's only engine",
}


def ignored_variables(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    """``EVALFLEET_*`` variables that name no setting (a typo, or a setting renamed or removed),
    each as a line for the log, with the closest setting's name when one is close (or, for a
    removed one, what to know instead): they change nothing, which a user should hear of."""
    environ = os.environ if environ is None else environ
    settings_names = [f.name.upper() for f in fields(Settings)]
    known = {ENV_PREFIX + name for name in settings_names} | NOT_SETTINGS
    for variable in (settings.judge_endpoint_api_key_env, settings.relations_endpoint_api_key_env):
        if variable:
            known.add(variable)  # an endpoint's API key may live here
    out = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        if name in RETIRED:
            out.append(f"{name} is no longer a setting: ignored ({RETIRED[name]})")
            continue
        close = difflib.get_close_matches(name[len(ENV_PREFIX):], settings_names, n=1, cutoff=0.8)
        hint = f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""
        out.append(f"{name} is not an evalfleet setting: ignored{hint}")
    return out


def to_environ(settings: Settings) -> dict[str, str]:
    """The ``EVALFLEET_*`` variables that make a child process see these settings."""
    return {ENV_PREFIX + f.name.upper(): str(getattr(settings, f.name)) for f in fields(Settings)}


# The largest value each number setting may have: far beyond any real run, and small enough
# that nothing overflows where the value is used (a seed beyond 2**32 - 1 is refused by NumPy's
# generators, 1e308 seconds by a timer, an integer of 400 digits by every float conversion).
MAXIMA = {
    "visibility_timeout": 10**7, "task_time_limit": 10**7, "stall_seconds": 10**7,
    "retry_backoff_seconds": 86_400, "poll_interval_seconds": 3600, "task_max_retries": 100,
    "judge_endpoint_timeout_seconds": 86_400, "judge_endpoint_max_retries": 100,
    "judge_endpoint_concurrency": 1024, "relations_endpoint_timeout_seconds": 86_400,
    "relations_endpoint_max_retries": 100, "relations_endpoint_concurrency": 1024, "judge_batch_size": 4096, "judge_reasoning_tokens": 131_072,
    "edit_steps": 1000, "edit_size": 16_384, "edit_guidance": 100, "memory_budget_gb": 100_000,
    "min_free_mb": 10**9, "top_k": 10_000, "batch_size": 1_000_000, "max_batch": 65_536, "max_new_tokens": 131_072,
    "task_prompts": 1_000_000, "workers_per_gpu": 64, "seed": 2**32 - 1,
}


def validate_settings(s: Settings) -> None:
    """Raises SettingsError for the first value no run can use (settings from flags too)."""
    for f in fields(Settings):
        value = getattr(s, f.name)
        # float("nan") and float("inf") parse; no setting can use them.
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingsError(f"{ENV_PREFIX}{f.name.upper()}={value!r} is not a finite number")
        if f.name in MAXIMA and value > MAXIMA[f.name]:
            raise SettingsError(f"{ENV_PREFIX}{f.name.upper()}={shown_number(value)} is out of range: "
                                f"at most {MAXIMA[f.name]}")
    if s.seed < 0:
        raise SettingsError(f"{ENV_PREFIX}SEED={s.seed} must be >= 0")
    for name in ("broker_url", "result_url"):
        url = getattr(s, name)
        if url and urlsplit(url).scheme not in REDIS_SCHEMES:
            raise SettingsError(f"{ENV_PREFIX}{name.upper()} is not a Redis URL: use "
                                f"redis://[:password@]host:port/db (scheme {urlsplit(url).scheme!r})")
    positive = ("top_k", "batch_size", "max_batch", "max_new_tokens", "task_prompts",
                "workers_per_gpu", "judge_batch_size", "task_time_limit", "retry_backoff_seconds",
                "visibility_timeout", "judge_reasoning_tokens", "judge_endpoint_concurrency",
                "relations_endpoint_concurrency")
    for name in positive:
        if getattr(s, name) < 1:
            raise SettingsError(f"{ENV_PREFIX}{name.upper()} must be at least 1")
    if s.min_free_mb < 0:
        raise SettingsError(f"{ENV_PREFIX}MIN_FREE_MB must be >= 0 (0: no check)")
    if s.object_cache_mb < 0:
        raise SettingsError(f"{ENV_PREFIX}OBJECT_CACHE_MB must be >= 0 (0: no cache)")
    if s.edit_steps < 0 or s.edit_size < 0 or s.edit_guidance < 0 or s.memory_budget_gb < 0:
        raise SettingsError(
            f"{ENV_PREFIX}EDIT_STEPS, EDIT_SIZE, EDIT_GUIDANCE and MEMORY_BUDGET_GB must be >= 0 "
            "(0: default)"
        )
    try:
        s.loras
    except SettingsError as exc:
        raise SettingsError(f"{ENV_PREFIX}EDITOR_LORAS={s.editor_loras!r}: {exc}") from None
    if not 0 <= s.temperature <= 100:
        raise SettingsError(f"{ENV_PREFIX}TEMPERATURE must be between 0 and 100")
    if s.task_max_retries < 0 or s.poll_interval_seconds <= 0 or s.stall_seconds <= 0:
        raise SettingsError(f"{ENV_PREFIX}TASK_MAX_RETRIES must be >= 0, POLL_INTERVAL_SECONDS "
                            f"and STALL_SECONDS > 0")
    _validate_judge(s)
    if not 0 <= s.edit_step_cache < 1:
        raise SettingsError(f"{ENV_PREFIX}EDIT_STEP_CACHE={s.edit_step_cache!r}: 0 (off) or a "
                            "threshold between 0 and 1 (e.g. 0.05)")
    if s.editor_compile not in ("auto", "on", "off"):
        raise SettingsError(f"{ENV_PREFIX}EDITOR_COMPILE={s.editor_compile!r}: use auto, on or off")
    _validate_relations_backend(s)
    if s.dtype not in ("auto", "bfloat16", "float16", "float32"):
        raise SettingsError(
            f"{ENV_PREFIX}DTYPE={s.dtype!r}: use auto, bfloat16, float16 or float32"
        )


def api_key_env_problem(endpoint: str) -> str:
    """Why EVALFLEET_<endpoint>_API_KEY_ENV is refused. The value is not shown: it may be the key itself."""
    return (f"{ENV_PREFIX}{endpoint}_API_KEY_ENV is the NAME of the environment variable that holds the "
            "endpoint's API key (e.g. OPENAI_API_KEY), not the key; its value (not shown) does not look "
            "like a name: letters, digits and _, all upper or all lower case, words of at most 16 characters")


def looks_like_variable_name(value: str) -> bool:
    """Whether ``value`` reads as an environment variable's name, not as a key put there by
    mistake: keys mix cases (``hf_AbC...``), dashes (``sk-...``) or long runs of letters and
    digits (hex keys); names are words of one case joined by ``_``."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", value) or value not in (value.upper(), value.lower()):
        return False
    return all(len(word) <= 16 and sum(c.isdigit() for c in word) <= 4 for word in value.split("_"))


def _validate_endpoint(s: Settings, endpoint: str, used: bool, what: str) -> None:
    """The settings of one endpoint (``endpoint``: its name in the settings), ``used`` or not."""
    def value(name: str):
        return getattr(s, f"{endpoint.lower()}_{name}")

    if used and (urlsplit(value("url")).scheme not in ("http", "https") or not value("model")):
        raise SettingsError(f"{what} needs {ENV_PREFIX}{endpoint}_URL (http[s]://host:port/v1) "
                            f"and {ENV_PREFIX}{endpoint}_MODEL (the served model's name)")
    if value("api_key_env") and not looks_like_variable_name(value("api_key_env")):
        raise SettingsError(api_key_env_problem(endpoint))
    if value("timeout_seconds") <= 0 or value("max_retries") < 0:
        raise SettingsError(f"{ENV_PREFIX}{endpoint}_TIMEOUT_SECONDS must be > 0 and "
                            f"{ENV_PREFIX}{endpoint}_MAX_RETRIES >= 0")


def _validate_judge(s: Settings) -> None:
    if s.judge_mode not in JUDGE_MODES:
        raise SettingsError(f"{ENV_PREFIX}JUDGE_MODE={s.judge_mode!r}: use {' or '.join(JUDGE_MODES)}")
    if s.judge_backend not in JUDGE_BACKENDS:
        raise SettingsError(f"{ENV_PREFIX}JUDGE_BACKEND={s.judge_backend!r}: use {' or '.join(JUDGE_BACKENDS)}")
    if not re.fullmatch(r"[\w-]{1,64}", s.judge_rubric):
        raise SettingsError(f"{ENV_PREFIX}JUDGE_RUBRIC={s.judge_rubric!r}: a rubric folder's name "
                            "(letters, digits, _ or -)")
    _validate_endpoint(s, JUDGE_ENDPOINT, s.judge_backend == "endpoint", "the endpoint judge")


def _validate_relations_backend(s: Settings) -> None:
    if s.relations_backend not in RELATIONS_BACKENDS:
        raise SettingsError(f"{ENV_PREFIX}RELATIONS_BACKEND={s.relations_backend!r}: use "
                            f"{' or '.join(RELATIONS_BACKENDS)}")
    _validate_endpoint(s, RELATIONS_ENDPOINT, s.relations_backend == "endpoint", "the relations endpoint")
    try:
        budgets = s.token_budgets
    except ValueError as exc:
        raise SettingsError(f"{ENV_PREFIX}BENCH_TOKEN_BUDGETS={s.bench_token_budgets!r} (benchmarks only): "
                            f"{exc}") from None
    if budgets is not None and s.relations_backend == "endpoint":
        raise SettingsError(f"{ENV_PREFIX}BENCH_TOKEN_BUDGETS (benchmarks only) shapes the local engines' "
                            f"lengths; an endpoint's server decides its own: unset it, or use "
                            f"{ENV_PREFIX}RELATIONS_BACKEND=local")


__all__ = ["Settings", "SettingsError", "load_settings", "validate_settings", "to_environ", "parse_lora",
           "looks_like_variable_name", "api_key_env_problem", "TINY_MODEL", "TINY_EDITORS", "LORA_SEPARATOR", "FIELD_SEPARATOR", "ENV_PREFIX"]
