"""What the producer asks of a job. Each job implements ``Job`` in its own package
(``producer/relations/``, ``producer/editbench/``) and ``producer/jobs.py`` lists them: the CLI,
the preflight checks and ``status`` ask the job for everything that differs between jobs and
never compare its name.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

from celery import Celery

from config import Settings
from shared.store import RunStore


class ExportError(Exception):
    """An export cannot be made as asked; nothing was written."""


def positive(text: str) -> int:
    """The type of a flag that counts something."""
    value = int(text)
    if value < 1:
        raise ValueError(f"{text} is not a positive integer")
    return value


class Registered(Protocol):
    """A run as its registration leaves it, to be driven to its end."""

    @property
    def run_id(self) -> str: ...

    @property
    def needs_workers(self) -> bool:
        """False when nothing is left for a worker (local workers are not started then)."""


class Job(ABC):
    name: ClassVar[str]  # the command line's word for the job, and the run's "job"
    help: ClassVar[str]  # what ``run <name>`` does, for --help
    stages: ClassVar[tuple[str, ...]]
    report_name: ClassVar[str]  # the report's file name when --output is not given
    # Set when registering a run sends all its tasks, so that a running fleet finishes it
    # without the producer: then ``enqueue <name>`` exists.
    enqueue_help: ClassVar[str | None] = None
    # Whether ``validate <name> FILE`` reads the job's input file.
    validates: ClassVar[bool] = False
    # The layouts ``export <name> --layout L DIR`` writes a run's outputs in (none: no export).
    export_layouts: ClassVar[tuple[str, ...]] = ()

    # --- command line ------------------------------------------------------------------

    @abstractmethod
    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        """The job's own flags of ``run`` (and ``enqueue``)."""

    def add_input_flags(self, parser: argparse.ArgumentParser) -> None:
        """The flags of how the job's input is read, ``validate``'s too. Only where ``validates``."""

    def flag_settings(self, args: argparse.Namespace) -> dict[str, Any]:
        """The settings the job's flags replace (raises SettingsError for an unusable one)."""
        return {}

    def add_sample_flags(self, parser: argparse.ArgumentParser) -> list[argparse.Action]:
        """Flags of ``sample`` that only this job's sample takes."""
        return []

    # --- before registering --------------------------------------------------------------

    @abstractmethod
    def models(self, settings: Settings) -> list[tuple[str, str, tuple[str, ...]]]:
        """The models a run loads on the workers: (setting, reference, the tiny models' names)."""

    def check_settings(self, settings: Settings) -> None:
        """The job's other settings a run would fail on (raises SettingsError)."""

    def directories(self, settings: Settings) -> list[tuple[Path, str]]:
        """Directories a run writes besides the work directory, with the setting naming each."""
        return []

    # --- a run ---------------------------------------------------------------------------

    @abstractmethod
    def queues(self, settings: Settings) -> list[str]:
        """The queues the job's tasks go to, in the order its stages run."""

    @abstractmethod
    def inputs(self, args: argparse.Namespace, settings: Settings, sample: bool = True) -> list[str | Path]:
        """The input files the flags name (a path, or an object's URL: shared/storage.py's
        as_location), or (with ``sample``) the built-in sample's."""

    @abstractmethod
    def register(self, settings: Settings, app: Celery, store_client, inputs: list[str | Path],
                 run_name: str | None, restart: bool) -> Registered:
        """Register the run (its identity: inputs and result-changing settings) and its items.

        Raises InputFileError before anything is registered if an input file is unusable, and
        RunMismatchError if ``run_name`` is a run of other inputs or settings.
        """

    @abstractmethod
    def drive(self, settings: Settings, app: Celery, run: Registered, store: RunStore,
              check: Callable[[], None], args: argparse.Namespace) -> None:
        """Send what is pending and wait until every item of the run is done or failed;
        ``check`` raises to abort (the local workers died)."""

    # --- after -------------------------------------------------------------------------

    @abstractmethod
    def write_report(self, store: RunStore, output: Path) -> dict[str, Any]:
        """Write the run's report from the store; returns it."""

    @abstractmethod
    def failures(self, report: dict[str, Any]) -> list[dict[str, Any]]:
        """The report's failed items."""

    @abstractmethod
    def summary(self, report: dict[str, Any], output: Path) -> str:
        """What ``run`` prints at the end."""

    def status(self, store: RunStore, meta: dict[str, Any], stages: list[dict[str, Any]],
               now: float) -> dict[str, Any]:
        """What ``status`` shows of a run of this job besides its stages' progress."""
        return {}

    @abstractmethod
    def write_sample(self, directory: Path, args: argparse.Namespace) -> str:
        """Write the built-in sample into ``directory``; returns the flags that run it."""

    def export(self, store: RunStore, layout: str, directory: Path) -> tuple[str, bool]:
        """Write the run's outputs into ``directory`` as ``layout`` names them; what was written and
        what was not (with why), and whether everything was. Only where ``export_layouts``."""
        raise NotImplementedError(f"the {self.name} job has no export")

    def validate(self, path: str | Path, settings: Settings) -> tuple[str, bool]:
        """What ``path`` holds and what is wrong with it, read as a run reads it; and whether it
        is clean. Only where ``validates``."""
        raise NotImplementedError(f"the {self.name} job has no input file check")
