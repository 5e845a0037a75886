"""Judge rubrics: the criteria a pair is scored on, their scale and how they combine.

A rubric is a folder ``<prompts_dir>/rubrics/<name>/`` with a ``rubric.json``::

    {"scale": {"min": 1, "max": 5},
     "criteria": [{"name": "instruction_following", "prompts": "instruction_following", "weight": 1}, ...],
     "overall": {"formula": "mean"}}

- each criterion's ``prompts`` is a folder (relative to the rubric's) of judge templates laid
  out as the prompts directory is today: ``default.system.txt``, ``default.user.txt`` and
  per-category overrides (``物理.system.txt``), read by PromptManager;
- ``scale``: integer scores from ``min`` to ``max``, at least 0 and at most 10 (the judge
  reads them as digit tokens, 10 as "1" then "0");
- ``overall.formula``: ``mean`` (weighted by the criteria's ``weight``, 1 by default, at most 1000),
  ``min``, or ``viescore``: sqrt(min(SC criteria) x min(PQ criteria)), VIEScore's overall,
  with ``overall.sc`` and ``overall.pq`` naming the criteria of each group.

The rubric ``default`` is built in: today's single 0-10 score, its templates the prompts
directory's own ``*.txt`` files (so a prompts directory of the earlier layout still works).
Pure Python, so the producer can import it without torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from shared.editbench.prompt_manager import PromptManager, PromptTemplateError, read_templates
from shared.errors import shown
from shared.files import MissingFile, UnreadableFile, read_utf8
from shared.jsonio import JsonProblem, parse_json

DEFAULT_RUBRIC = "default"
RUBRICS_DIR = "rubrics"
RUBRIC_FILE = "rubric.json"
FORMULAS = ("mean", "min", "viescore")
# The reasoning mode's instruction, appended to each criterion's user prompt.
REASONING_FILE = "reasoning/suffix.txt"

# Scores are digits the judge writes: 0 to 10 at most.
SCALE_LIMITS = (0, 10)
# The largest criterion weight: any real weighting fits, and sums of weights stay finite.
WEIGHT_MAX = 1000

_BUILT_IN_DEFAULT = {"scale": {"min": 0, "max": 10}, "criteria": [{"name": "score", "prompts": ""}],
                     "overall": {"formula": "mean"}}


class RubricError(ValueError):
    """A rubric that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Criterion:
    name: str
    prompts: str  # folder of its templates, relative to the prompts directory ("" = the directory)
    weight: float = 1.0


@dataclass(frozen=True)
class Rubric:
    name: str
    criteria: tuple[Criterion, ...]
    scale_min: int
    scale_max: int
    formula: str
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # viescore: "sc", "pq"

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(range(self.scale_min, self.scale_max + 1))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.criteria)

    def overall(self, scores: Mapping[str, float]) -> float:
        """The pair's overall score from its criteria's scores (all of them present)."""
        if self.formula == "min":
            return min(scores[c.name] for c in self.criteria)
        if self.formula == "viescore":
            sc = min(scores[n] for n in self.groups["sc"])
            pq = min(scores[n] for n in self.groups["pq"])
            return math.sqrt(sc * pq)
        total = sum(c.weight for c in self.criteria)
        return sum(c.weight * scores[c.name] for c in self.criteria) / total

    def describe(self) -> dict[str, Any]:
        """What the report says about the rubric."""
        return {"name": self.name, "criteria": list(self.names), "scale": [self.scale_min, self.scale_max],
                "overall": self.formula,
                **({"weights": {c.name: c.weight for c in self.criteria}} if self.formula == "mean" else {}),
                **({"groups": {k: list(v) for k, v in self.groups.items()}} if self.groups else {})}


def rubric_file(name: str) -> str:
    return f"{RUBRICS_DIR}/{name}/{RUBRIC_FILE}"


def read_rubric_templates(prompts_dir: Path, name: str, reasoning: bool = False) -> dict[str, str]:
    """Every file the rubric ``name`` uses (path relative to ``prompts_dir`` -> text), each checked.

    What the producer stores with a run: the workers score with these, not with their own
    folder's. The default rubric's are today's files, under today's names.
    """
    prompts_dir = Path(prompts_dir)
    if not re.fullmatch(r"[\w-]{1,64}", name):
        raise RubricError(f"rubric {name!r}: a rubric folder's name has letters, digits, _ or - only")
    templates: dict[str, str] = {}
    if name != DEFAULT_RUBRIC or (prompts_dir / rubric_file(name)).exists():
        path = prompts_dir / rubric_file(name)
        try:
            templates[rubric_file(name)] = read_utf8(path)
        except MissingFile:
            known = sorted(p.parent.name for p in (prompts_dir / RUBRICS_DIR).glob(f"*/{RUBRIC_FILE}"))
            raise RubricError(f"no rubric {name!r}: {path} does not exist (rubrics in {prompts_dir}: "
                              f"{', '.join([DEFAULT_RUBRIC, *known])})") from None
        except UnreadableFile as exc:
            raise RubricError(str(exc)) from None
    rubric = rubric_from_templates(name, templates, prompts_dir)
    for criterion in rubric.criteria:
        for file_name, text in read_templates(prompts_dir / criterion.prompts).items():
            templates[_join(criterion.prompts, file_name)] = text
    if reasoning:
        path = prompts_dir / REASONING_FILE
        try:
            templates[REASONING_FILE] = read_utf8(path).strip()
        except MissingFile:
            raise RubricError(f"the reasoning mode's instruction {path} is missing") from None
        except UnreadableFile as exc:
            raise RubricError(str(exc)) from None
    return templates


def rubric_from_templates(name: str, templates: Mapping[str, str], prompts_dir: Path | None = None) -> Rubric:
    """The rubric ``name`` as stored with a run (``templates`` from read_rubric_templates);
    messages name its file under ``prompts_dir`` when given."""
    source = rubric_file(name)
    shown_source = str(Path(prompts_dir) / source) if prompts_dir is not None else source
    if source in templates:
        try:
            # NaN, Infinity and 1e999 become markers every field check refuses.
            data = parse_json(templates[source])
        except JsonProblem as exc:
            raise RubricError(f"{shown_source}: {exc}") from None
    elif name == DEFAULT_RUBRIC:
        data = _BUILT_IN_DEFAULT
    else:
        raise RubricError(f"no rubric {name!r} among the run's templates")
    return _parse(name, shown_source, data)


def criterion_prompts(rubric: Rubric, prompts_dir: Path, templates: Mapping[str, str]) -> dict[str, PromptManager]:
    """criterion name -> the PromptManager of its templates (from the run's stored files)."""
    managers = {}
    for criterion in rubric.criteria:
        prefix = _join(criterion.prompts, "")
        own = {key[len(prefix):]: text for key, text in templates.items()
               if key.startswith(prefix) and "/" not in key[len(prefix):] and key.endswith(".txt")}
        managers[criterion.name] = PromptManager(Path(prompts_dir) / criterion.prompts, own)
    return managers


def reasoning_suffix(rubric: Rubric, templates: Mapping[str, str]) -> str:
    """The reasoning mode's instruction, with the rubric's scale filled in."""
    try:
        text = templates[REASONING_FILE]
    except KeyError:
        raise RubricError(f"the run has no reasoning instruction ({REASONING_FILE})") from None
    return text.replace("{min}", str(rubric.scale_min)).replace("{max}", str(rubric.scale_max))


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _parse(name: str, source: str, data: Any) -> Rubric:
    if not isinstance(data, dict):
        raise RubricError(f"{source}: expected a JSON object with scale, criteria and overall")
    scale = data.get("scale")
    if not (isinstance(scale, dict) and all(_is_int(scale.get(k)) for k in ("min", "max"))
            and SCALE_LIMITS[0] <= scale["min"] < scale["max"] <= SCALE_LIMITS[1]):
        raise RubricError(f"{source}: scale must be {{\"min\": m, \"max\": n}} with integers "
                          f"{SCALE_LIMITS[0]} <= m < n <= {SCALE_LIMITS[1]}, not {shown(scale)}")
    raw_criteria = data.get("criteria")
    if not isinstance(raw_criteria, list) or not raw_criteria:
        raise RubricError(f"{source}: criteria must be a non-empty list")
    criteria = tuple(_criterion(source, name, i, c) for i, c in enumerate(raw_criteria))
    names = [c.name for c in criteria]
    if len(set(names)) != len(names):
        raise RubricError(f"{source}: criteria names repeat ({names})")
    overall = data.get("overall", {"formula": "mean"})
    formula = overall.get("formula") if isinstance(overall, dict) else None
    if formula not in FORMULAS:
        raise RubricError(f"{source}: overall.formula must be one of {', '.join(FORMULAS)}, not {formula!r}")
    groups: dict[str, tuple[str, ...]] = {}
    if formula == "viescore":
        for group in ("sc", "pq"):
            members = overall.get(group)
            if not (isinstance(members, list) and members and set(members) <= set(names)):
                raise RubricError(f"{source}: overall.{group} must list criteria of the rubric "
                                  f"({', '.join(names)}), not {members!r}")
            groups[group] = tuple(members)
    return Rubric(name=name, criteria=criteria, scale_min=scale["min"], scale_max=scale["max"],
                  formula=formula, groups=groups)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _criterion(source: str, rubric: str, index: int, raw: Any) -> Criterion:
    where = f"{source}: criteria[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not re.fullmatch(r"[\w-]{1,64}", raw["name"]):
        raise RubricError(f"{where}: needs a name of letters, digits, _ or - (at most 64)")
    prompts = raw.get("prompts", raw["name"])
    weight = raw.get("weight", 1)
    if not isinstance(prompts, str) or ".." in PurePosixPath(prompts).parts or prompts.startswith("/"):
        raise RubricError(f"{where}.prompts: a folder inside the rubric's, not {prompts!r}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= WEIGHT_MAX:
        # NaN fails every comparison; Infinity and 1e999 are read as markers, not numbers.
        raise RubricError(f"{where}.weight: a positive number at most {WEIGHT_MAX}, not {shown(weight)}")
    # A rubric folder's criteria live under it; the built-in default's are the prompts directory's own.
    base = "" if (rubric == DEFAULT_RUBRIC and not prompts) else f"{RUBRICS_DIR}/{rubric}"
    return Criterion(name=raw["name"], prompts=_join(base, prompts).rstrip("/"), weight=float(weight))


__all__ = ["Rubric", "Criterion", "RubricError", "read_rubric_templates", "rubric_from_templates",
           "criterion_prompts", "reasoning_suffix", "DEFAULT_RUBRIC", "PromptTemplateError"]
