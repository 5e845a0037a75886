"""Checks made before a run registers anything: a setting or path that would make every
item fail, or the run fail at its end, stops the command at its start (exit 2), named."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from config import ENV_PREFIX, TINY_EDITORS, TINY_MODEL, Settings, SettingsError
from shared.editbench.editor_families import FAMILIES, unsupported_message
from shared.editbench.prompt_manager import PromptManager, PromptTemplateError

MODEL_SETTINGS = {"relations": ("relations_model",), "editbench": ("editor_model", "judge_model")}


def check_run_settings(settings: Settings, job: str) -> None:
    """The models the job needs can exist, and the judge's prompts are there."""
    for name in MODEL_SETTINGS[job]:
        if name == "judge_model" and settings.judge_backend == "endpoint":
            continue  # the endpoint serves the judge: no model here
        _check_model(name, getattr(settings, name))
    if job == "editbench":
        _check_editor_family(settings.editor_model, settings.model_revision)
        _check_loras(settings)
        try:
            PromptManager(settings.prompts)
        except (OSError, PromptTemplateError) as exc:
            raise SettingsError(f"{ENV_PREFIX}PROMPTS_DIR={settings.prompts_dir!r}: {exc}") from None


def _check_model(name: str, ref: str) -> None:
    # A hub id cannot be checked offline; a path that does not exist and is no hub id
    # would fail every item on the workers.
    tiny_names = TINY_EDITORS if name == "editor_model" else (TINY_MODEL,)
    if ref in tiny_names or Path(ref).exists():
        return
    try:
        validate_repo_id(ref)
    except HFValidationError:
        raise SettingsError(f"{ENV_PREFIX}{name.upper()}={ref!r}: no such directory, and not a hub id "
                            f"(use a local model directory, a hub id such as Qwen/Qwen3-VL-8B-Instruct, "
                            f"or 'tiny')") from None


def _check_editor_family(ref: str, revision: str) -> None:
    """The editor's pipeline class (model_index.json of a local directory, or of a hub id in
    the local Hugging Face cache) is one editbench drives; a hub id not in the cache is
    checked by the workers, which fail its items with the same message."""
    if ref in TINY_EDITORS:
        return
    if Path(ref).is_dir():
        index = Path(ref) / "model_index.json"
        if not index.is_file():
            raise SettingsError(f"{ENV_PREFIX}EDITOR_MODEL={ref!r}: no model_index.json in it "
                                "(not a diffusers pipeline directory)")
    else:
        cached = try_to_load_from_cache(ref, "model_index.json", revision=revision or None)
        if not isinstance(cached, str):
            return
        index = Path(cached)
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, ValueError, AttributeError) as exc:
        raise SettingsError(f"{ENV_PREFIX}EDITOR_MODEL={ref!r}: {index} is not readable JSON "
                            f"({exc})") from None
    if class_name not in FAMILIES:
        raise SettingsError(unsupported_message(ref, class_name))


def _check_loras(settings: Settings) -> None:
    """Each LoRA is a .safetensors file, or a directory holding one."""
    for path, _ in settings.loras:
        where = f"{ENV_PREFIX}EDITOR_LORAS (--lora) {path!r}"
        lora = Path(path)
        if lora.is_dir():
            if not any(lora.glob("*.safetensors")):
                raise SettingsError(f"{where}: the directory holds no .safetensors file")
        elif not lora.is_file():
            raise SettingsError(f"{where}: no such file or directory")
        elif lora.suffix != ".safetensors":
            raise SettingsError(f"{where}: not a .safetensors file")
        if not os.access(lora, os.R_OK):
            raise SettingsError(f"{where}: not readable")


def check_writable_dir(directory: Path, setting: str) -> None:
    """``directory`` is (or can be made) a directory this process can write in."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise SettingsError(f"{setting}={str(directory)!r}: not a writable directory "
                            f"({exc.strerror or exc})") from None


def check_output_path(output: Path) -> None:
    """A report can be written at ``output``: checked before any work starts."""
    if output.is_dir():
        raise SettingsError(f"--output {output}: is a directory; give a file path")
    parent = output.parent
    for folder in (parent, *parent.parents):
        if folder.exists() and not folder.is_dir():
            raise SettingsError(f"--output {output}: {folder} is a file, not a directory")
    if output.exists() and not os.access(output, os.W_OK):
        raise SettingsError(f"--output {output}: the file is not writable")
    check_writable_dir(parent, "--output")
