"""Find, build and load the models a worker runs.

``EVALFLEET_RELATIONS_MODEL`` (and ``EVALFLEET_JUDGE_MODEL``) name a Qwen3-VL,
``EVALFLEET_EDITOR_MODEL`` a diffusers edit pipeline of a supported family: a hub id
such as ``Qwen/Qwen3-VL-8B-Instruct`` or ``Qwen/Qwen-Image-Edit-2509``, a local
directory, or ``tiny`` (``tiny-qwen-image-edit-plus``, ``tiny-flux-kontext`` for the
other editor families) for a random model built once under the work directory. All
load through the same ``from_pretrained`` calls.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import diffusers
import torch
from diffusers import DiffusionPipeline
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import (AutoConfig, AutoModelForImageTextToText, AutoProcessor, PretrainedConfig,
                          PreTrainedModel, ProcessorMixin)

from config import ENV_PREFIX, TINY_EDITORS, TINY_MODEL
from shared.editbench.editor_families import family_for
from workers.editing.loras import apply_loras
from workers.models.tiny import (
    build_tiny_flux_kontext,
    build_tiny_qwen3_vl,
    build_tiny_qwen_image_edit,
    build_tiny_qwen_image_edit_plus,
)

logger = logging.getLogger(__name__)

# The kinds of model resolve_model_path() knows: the tiny names each accepts, and the
# directory each one's tiny model is built in.
QWEN3_VL = "qwen3-vl"
EDITOR = "editor"
TINY_DIR_NAMES = {
    QWEN3_VL: {TINY_MODEL: "tiny-qwen3-vl"},
    EDITOR: {TINY_MODEL: "tiny-qwen-image-edit", "tiny-qwen-image-edit-plus": "tiny-qwen-image-edit-plus",
             "tiny-flux-kontext": "tiny-flux-kontext"},
}
TINY_DIR_NAME = TINY_DIR_NAMES[QWEN3_VL][TINY_MODEL]

# The settings that name each model: error messages say which one to fix.
RELATIONS_MODEL_SETTING = f"{ENV_PREFIX}RELATIONS_MODEL"
JUDGE_MODEL_SETTING = f"{ENV_PREFIX}JUDGE_MODEL"
EDITOR_MODEL_SETTING = f"{ENV_PREFIX}EDITOR_MODEL"

# How a Mixture-of-Experts model (Qwen3-VL-30B-A3B) runs its experts: "grouped_mm", one
# grouped matrix product per layer for all the experts the batch chose, is the fastest
# transformers offers (Qwen3-VL-30B-A3B on an H200: 0.167 s per judged pair against 0.426 s for
# the eager loop over experts, bench/RESULTS.md, "Editbench at real size"). Where it is not available,
# transformers' default.
FAST_EXPERTS = "grouped_mm"
# What experts_implementation() reports for a model without experts.
DENSE = "dense"

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class ModelNotFoundError(RuntimeError):
    """The model's hub id or directory could not be loaded (missing, offline, no access)."""


def resolve_model_path(ref: str, models_dir: Path, kind: str = QWEN3_VL) -> str:
    """Turn a model setting into what ``from_pretrained`` takes; builds the tiny model on first use.

    ``kind`` says which tiny models the tiny names mean: ``qwen3-vl`` (``tiny``) or
    ``editor`` (``tiny`` and the other names of TINY_EDITORS).
    """
    if kind not in TINY_DIR_NAMES:
        raise ValueError(f"unknown model kind {kind!r}: use one of {', '.join(TINY_DIR_NAMES)}")
    if ref not in TINY_DIR_NAMES[kind]:
        return ref
    target = Path(models_dir) / TINY_DIR_NAMES[kind][ref]
    if not target.is_dir():
        _build_tiny_once(target, _tiny_builder(kind, ref))
    return str(target)


def _tiny_builder(kind: str, ref: str) -> Callable[[Path], Path]:
    # Looked up when called, not kept in a module-level table, so tests can monkeypatch
    # the builders.
    if kind == QWEN3_VL:
        return build_tiny_qwen3_vl
    return {"QwenImageEditPipeline": build_tiny_qwen_image_edit,
            "QwenImageEditPlusPipeline": build_tiny_qwen_image_edit_plus,
            "FluxKontextPipeline": build_tiny_flux_kontext}[TINY_EDITORS[ref]]


def _build_tiny_once(target: Path, build: Callable[[Path], Path]) -> None:
    """Build into a temp dir and rename it into place, under a lock.

    Several workers may start at once: the lock makes all but one wait, and the
    rename means nobody ever sees a half-written directory, even after a crash.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f"{target.name}.lock"
    with open(lock_path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file is closed
        if target.is_dir():  # another process built it while we waited
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            logger.info("building the tiny random model %s", target)
            build(tmp)
            _make_world_readable(tmp)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _make_world_readable(directory: Path) -> None:
    # mkdtemp and the safetensors writer create owner-only entries; workers may run as other users.
    # A diffusers pipeline keeps its components in subdirectories, hence the walk.
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def pick_device(setting: str) -> torch.device:
    """``auto`` means the GPU when one is visible, else the CPU; anything else is a torch device name."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise ValueError(
            f"EVALFLEET_DEVICE={setting!r} is not a device: use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"EVALFLEET_DEVICE={setting!r} but no CUDA GPU is visible to this process")
    return device


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """``auto`` means bfloat16 on a GPU and float32 on the CPU (CPU bf16 matmuls are slow)."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[setting]
    except KeyError:
        raise ValueError(
            f"EVALFLEET_DTYPE={setting!r}: use auto, {', '.join(_DTYPES)}"
        ) from None


def load_vlm(
    ref: str, *, revision: str, dtype: torch.dtype, device: torch.device,
    setting: str = RELATIONS_MODEL_SETTING,
) -> tuple[ProcessorMixin, PreTrainedModel]:
    """Load a processor and an image-text-to-text model ready for batched generation.

    ``ref`` is a hub id or a local directory (resolve ``tiny`` first with
    :func:`resolve_model_path`); an empty ``revision`` means the default branch.
    ``setting`` names the variable that chose ``ref`` (the relations model or the
    judge), so a ModelNotFoundError tells the user which one to fix.
    """
    if ref == TINY_MODEL:
        raise ValueError(f"{ref!r} is not loadable as is; pass it through resolve_model_path() first")
    revision_arg = revision or None
    try:
        _check_path_or_repo_id(ref)
        processor = AutoProcessor.from_pretrained(ref, revision=revision_arg)
        model = _load_vlm_model(ref, revision_arg, dtype, device)
    except (OSError, HFValidationError) as err:
        raise ModelNotFoundError(_not_found_message(ref, revision, err, setting=setting)) from err
    # Batched generation appends new tokens on the right, so prompts must be left-padded.
    processor.tokenizer.padding_side = "left"
    model.to(device)
    model.eval()
    logger.info("loaded %s (revision %s) on %s as %s, experts: %s", ref, revision or "default",
                device, dtype, experts_implementation(model))
    return processor, model


def _load_vlm_model(ref: str, revision: str | None, dtype: torch.dtype,
                    device: torch.device) -> PreTrainedModel:
    config = AutoConfig.from_pretrained(ref, revision=revision)
    # device_map loads the weights straight onto the device instead of via CPU RAM.
    kwargs = {"config": config, "revision": revision, "dtype": dtype, "device_map": device}
    if _has_experts(config):
        try:
            return AutoModelForImageTextToText.from_pretrained(
                ref, experts_implementation=FAST_EXPERTS, **kwargs)
        except (ValueError, TypeError) as err:
            # Raised before any weight is read: an older transformers, or a model class
            # that cannot switch its experts. Its default works, only slower.
            logger.warning("%s: experts implementation %r is not available (%s); loading with "
                           "transformers' default", ref, FAST_EXPERTS, err)
            config = AutoConfig.from_pretrained(ref, revision=revision)
            kwargs["config"] = config
    return AutoModelForImageTextToText.from_pretrained(ref, **kwargs)


def _has_experts(config: PretrainedConfig) -> bool:
    return getattr(config.get_text_config(), "num_experts", 0) > 0


def experts_implementation(model: PreTrainedModel) -> str:
    """How ``model`` runs its experts ("grouped_mm", "eager", ...), or "dense" without experts."""
    if not _has_experts(model.config):
        return DENSE
    return getattr(model.config, "_experts_implementation", None) or "eager"


def load_image_edit_pipeline(
    ref: str, *, revision: str, dtype: torch.dtype, device: torch.device,
    loras: Sequence[dict[str, Any]] = (),
) -> DiffusionPipeline:
    """Load an edit pipeline of a supported family (all components in ``dtype``) onto
    ``device``, with ``loras`` (``{"path", "scale", "digest"}`` each) applied.

    ``ref`` is a hub id such as ``Qwen/Qwen-Image-Edit`` or a local pipeline directory
    (resolve the tiny names first with :func:`resolve_model_path` and kind ``editor``);
    an empty ``revision`` means the default branch. The pipeline class is read from
    ``model_index.json`` before any weight is loaded: an unsupported one raises
    UnsupportedEditorError, a LoRA that does not fit LoraMismatchError.
    """
    if ref in TINY_EDITORS:
        raise ValueError(
            f"{ref!r} is not loadable as is; pass it through "
            f"resolve_model_path(ref, models_dir, kind={EDITOR!r}) first"
        )
    try:
        _check_path_or_repo_id(ref)
        class_name = editor_class_name(ref, revision)
        family_for(class_name, ref)
        pipeline_class = getattr(diffusers, class_name)
        # diffusers 0.42 deprecates torch_dtype in favour of dtype (same meaning).
        pipeline = pipeline_class.from_pretrained(ref, revision=revision or None, dtype=dtype)
    except (OSError, HFValidationError) as err:
        raise ModelNotFoundError(
            _not_found_message(ref, revision, err, setting=EDITOR_MODEL_SETTING,
                               what="a local edit pipeline directory")
        ) from err
    apply_loras(pipeline, loras, ref)
    pipeline.to(device)
    logger.info("loaded %s (%s, revision %s) on %s as %s", ref, class_name, revision or "default",
                device, dtype)
    return pipeline


def editor_class_name(ref: str, revision: str) -> str:
    """The pipeline class of an editor checkpoint: ``_class_name`` of its model_index.json
    (read from the directory, the Hugging Face cache or the hub)."""
    config = DiffusionPipeline.load_config(ref, revision=revision or None)
    return str(config.get("_class_name", ""))


def _check_path_or_repo_id(ref: str) -> None:
    # from_pretrained reports a missing directory as a malformed hub id (transformers) or
    # a generic ValueError (diffusers); say it plainly.
    if Path(ref).exists():
        return
    try:
        validate_repo_id(ref)
    except HFValidationError:
        raise FileNotFoundError(f"no such directory, and not a hub id ({ref})") from None


def _not_found_message(
    ref: str,
    revision: str,
    err: Exception,
    setting: str = RELATIONS_MODEL_SETTING,
    what: str = "a local model directory",
) -> str:
    at = f" at revision {revision!r}" if revision else ""
    reason = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
    return (
        f"cannot load the model {ref!r}{at}: {reason}. "
        f"Set {setting} to {what}, a hub id that is "
        "reachable (or already in the Hugging Face cache), or 'tiny' for the random test model."
    )
