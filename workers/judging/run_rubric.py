"""The rubric and prompt templates of a run, as stored with it (the producer's), not this
worker's files; kept per process for the run's later tasks."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared.store import RunStore
from workers.errors import PermanentError
from workers.run_settings import run_setting

if TYPE_CHECKING:
    from shared.editbench.prompt_manager import PromptManager
    from shared.editbench.rubric import Rubric


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
