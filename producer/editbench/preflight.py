"""Checks of an editbench run's settings before it registers anything: the editor's family,
its LoRAs and the judge's prompts (``producer/preflight.py`` checks what every job has)."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from config import ENV_PREFIX, TINY_EDITORS, Settings, SettingsError
from producer.editbench.external_edits import check_edits_settings
from producer.editbench.register import run_templates
from shared.editbench.editor_families import FAMILIES, unsupported_message
from shared.editbench.prompt_manager import PromptManager, PromptTemplateError
from shared import storage
from shared.files import UnreadableFile, open_regular, read_utf8


def check_editbench_settings(settings: Settings) -> None:
    check_edits_settings(settings)
    if not settings.edits_dir:  # edits made elsewhere need no editor
        check_editor_family(settings.editor_model, settings.model_revision)
        check_loras(settings)
    try:
        PromptManager(settings.prompts)
    except (OSError, PromptTemplateError) as exc:
        raise SettingsError(f"{ENV_PREFIX}PROMPTS_DIR={settings.prompts_dir!r}: {exc}") from None
    run_templates(settings)  # the rubric's files and numbers, before anything starts
    check_artifact_store(settings)


def check_artifact_store(settings: Settings) -> None:
    """An object-store artifact root can be written (its bucket exists, the credentials may write):
    else every edit would fail on the workers."""
    if settings.artifacts_in_store:
        try:
            storage.check_writable(settings.artifact_root)
        except storage.StorageError as exc:
            raise SettingsError(f"{ENV_PREFIX}ARTIFACT_ROOT: {exc}") from None


def check_editor_family(ref: str, revision: str) -> None:
    """The editor's pipeline class (model_index.json of a local directory, or of a hub id in
    the local Hugging Face cache) is one editbench drives; a hub id not in the cache is
    checked by the workers, which fail its items with the same message."""
    if ref in TINY_EDITORS:
        return
    if Path(ref).is_dir():
        index = Path(ref) / "model_index.json"
        if not index.exists():
            raise SettingsError(f"{ENV_PREFIX}EDITOR_MODEL={ref!r}: no model_index.json in it "
                                "(not a diffusers pipeline directory)")
    else:
        cached = try_to_load_from_cache(ref, "model_index.json", revision=revision or None)
        if not isinstance(cached, str):
            return
        index = Path(cached)
    try:
        class_name = json.loads(read_utf8(index)).get("_class_name", "")
    except (UnreadableFile, ValueError, AttributeError) as exc:
        raise SettingsError(f"{ENV_PREFIX}EDITOR_MODEL={ref!r}: {index} is not readable JSON "
                            f"({exc})") from None
    if class_name not in FAMILIES:
        raise SettingsError(unsupported_message(ref, class_name))


def check_loras(settings: Settings) -> None:
    """Each LoRA is a .safetensors file, or a directory holding one."""
    for path, _ in settings.loras:
        where = f"{ENV_PREFIX}EDITOR_LORAS (--lora) {path!r}"
        lora = Path(path)
        if lora.is_dir():
            files = sorted(lora.glob("*.safetensors"))
            if not files:
                raise SettingsError(f"{where}: the directory holds no .safetensors file")
        elif not lora.exists():
            raise SettingsError(f"{where}: no such file or directory")
        elif lora.suffix != ".safetensors":
            raise SettingsError(f"{where}: not a .safetensors file")
        else:
            files = [lora]
        for file in files:
            try:
                open_regular(file).close()  # a FIFO or a device would block the editor's load
            except UnreadableFile as exc:
                raise SettingsError(f"{where}: {exc}") from None
