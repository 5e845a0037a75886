"""Checks made before a run registers anything: a setting or path that would make every
item fail, or the run fail at its end, stops the command at its start (exit 2), named."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from config import ENV_PREFIX, Settings, SettingsError
from producer.job import Job
from shared.disk import check_free_space


def check_run_settings(settings: Settings, job: Job) -> None:
    """The models the job needs can exist, and its other settings hold (the judge's prompts...)."""
    for setting, ref, tiny_names in job.models(settings):
        check_model(setting, ref, tiny_names)
    job.check_settings(settings)


def check_model(setting: str, ref: str, tiny_names: tuple[str, ...]) -> None:
    # A hub id cannot be checked offline; a path that does not exist and is no hub id
    # would fail every item on the workers.
    if ref in tiny_names or Path(ref).exists():
        return
    try:
        validate_repo_id(ref)
    except HFValidationError:
        raise SettingsError(f"{ENV_PREFIX}{setting.upper()}={ref!r}: no such directory, and not a hub id "
                            f"(use a local model directory, a hub id such as Qwen/Qwen3-VL-8B-Instruct, "
                            f"or 'tiny')") from None


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


def check_free_space_for(settings: Settings, job: Job) -> None:
    """The work directory (and the job's other directories) have EVALFLEET_MIN_FREE_MB free:
    a run started on a full disk would fail its writes part-way (DiskFull, exit 3)."""
    check_free_space(settings.work_dir, settings.min_free_mb, "EVALFLEET_WORK_DIR")
    for directory, setting in job.directories(settings):
        check_free_space(directory, settings.min_free_mb, setting)
