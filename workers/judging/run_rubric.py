"""The rubric and prompt templates of a run, as stored with it (the producer's), not this
worker's files; kept per process for the run's later tasks."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared.editbench.run_settings import EditbenchRunSettings
from shared.store import RunStore
from workers.errors import PermanentError
from workers.run_settings import read_run_settings

if TYPE_CHECKING:
    from shared.editbench.prompt_manager import PromptManager
    from shared.editbench.rubric import Rubric


@dataclass(frozen=True)
class RunRubric:
    rubric: "Rubric"
    prompts: dict[str, "PromptManager"]  # criterion -> its templates
    reasoning_suffix: str | None  # appended to each user prompt in the reasoning mode


def run_rubric(store: RunStore) -> RunRubric:
    """The rubric and templates stored with the store's run (the producer's), not this worker's files."""
    return rubric_of(store.run_id, read_run_settings(store, EditbenchRunSettings))


def rubric_of(run_id: str, run: EditbenchRunSettings) -> RunRubric:
    """The rubric and templates of run ``run_id``, whose settings are ``run``."""
    return _run_rubric(run_id, run.prompts_dir, run.judge_rubric, run.judge_mode,
                       json.dumps(run.prompt_templates, sort_keys=True))


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
