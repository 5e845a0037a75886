"""Judge rubrics: the criteria a pair is scored on, their scale and how they combine.

A rubric is a folder ``<prompts_dir>/rubrics/<name>/`` with a ``rubric.json``::

    {"scale": {"min": 1, "max": 5},
     "scoring": "stated",
     "criteria": [{"name": "instruction_following", "prompts": "instruction_following", "weight": 1},
                  {"name": "knowledge", "categories": ["physics", "chemistry"]}, ...],
     "overall": {"formula": "mean"},
     "report": {"average": "macro", "split_by": ["instruction_language"]}}

- each criterion's ``prompts`` is a folder (relative to the rubric's) of judge templates laid
  out as the prompts directory is today: ``default.system.txt``, ``default.user.txt`` and
  per-category overrides (``物理.system.txt``), read by PromptManager;
- a criterion's ``categories`` (optional): the only categories it is scored in (elsewhere it is
  neither asked nor counted); its ``weight`` a number, or per category
  ``{"*": 0.5, "logical_reasoning": 0.7}`` (``*``: every other category);
- ``scale``: integer scores from ``min`` to ``max``, at least 0 and at most 10 (the judge
  reads them as digit tokens, 10 as "1" then "0");
- ``scoring``: ``expectation`` (the default: the expectation over the judge's probabilities of
  the scale's values) or ``stated`` (the integer the judge's answer states, as the public
  benchmarks' scorers read it; an answer stating none fails, nothing is guessed);
- ``overall.formula``: ``mean`` (weighted by the criteria's ``weight``, 1 by default, at most 1000),
  ``min``, or ``viescore``: sqrt(min(SC criteria) x min(PQ criteria)), VIEScore's overall,
  with ``overall.sc`` and ``overall.pq`` naming the criteria of each group; each over the
  criteria scored in the pair's category. ``overall.penalty`` (optional)
  ``{"criterion": "reasoning", "at": 1, "factor": 0.5}``: the overall score times ``factor``
  when that criterion's score is ``at`` (never below the scale's minimum);
- a criterion's ``images`` (optional): what its judge is shown, in order: ``original``, ``edited``
  and record fields' images (``shared/editbench/judge_images.py``); by default the input
  image(s), then the edit;
- ``fields`` (optional) ``{"optional": ["reference", ...]}``: record fields the templates may
  name that a benchmark's records need not have (a line naming one is left out of the pairs
  without it); any other placeholder no record has is refused when a run is registered;
- ``report`` (optional) says how the headline numbers are formed: ``average`` ``micro`` (over
  pairs, the default) or ``macro`` (over the rows' means); ``rows_by`` the tables' rows
  (``category``, the default, and record fields such as ``subtask``); ``split_by`` record
  fields whose values make the columns (``language``); ``subsets`` named columns of the pairs
  whose fields hold given values (``{"intersection": {"Intersection_exist": true}}``); ``shares``
  the share of pairs meeting a condition (``{"accuracy": "all_criteria_at_max"}``).

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

from shared.editbench.judge_images import DEFAULT_SOURCES, ImageSource, image_sources
from shared.editbench.prompt_manager import PromptManager, PromptTemplateError, read_templates
from shared.errors import shown
from shared.files import MissingFile, UnreadableFile, read_utf8
from shared.jsonio import JsonProblem, parse_json

DEFAULT_RUBRIC = "default"
RUBRICS_DIR = "rubrics"
RUBRIC_FILE = "rubric.json"
FORMULAS = ("mean", "min", "viescore")
SCORINGS = ("expectation", "stated")
AVERAGES = ("micro", "macro")
# The conditions a report's share can count (RISEBench's accuracy: every criterion at the maximum).
SHARE_CONDITIONS = ("all_criteria_at_max",)
# The row key of the tables by the pair's category (any other row key is a record field).
CATEGORY = "category"
# A criterion weight's key for every category not named.
EVERY_CATEGORY = "*"
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
    # Weights in named categories, overriding ``weight`` there.
    category_weights: Mapping[str, float] = field(default_factory=dict)
    # The only categories it is scored in; None: every category.
    categories: tuple[str, ...] | None = None
    # The images its judge is shown, in order (shared/editbench/judge_images.py).
    images: tuple[ImageSource, ...] = DEFAULT_SOURCES

    def applies(self, category: str | None) -> bool:
        return self.categories is None or category in self.categories

    def weight_in(self, category: str | None) -> float:
        return self.category_weights.get(category, self.weight) if category is not None else self.weight


@dataclass(frozen=True)
class Penalty:
    """The overall score times ``factor`` when ``criterion`` scores ``at`` (RISEBench halves it
    when reasoning is 1)."""

    criterion: str
    at: int
    factor: float


@dataclass(frozen=True)
class ReportSpec:
    """How the report forms the headline numbers (see the module's docstring)."""

    average: str = "micro"
    rows_by: tuple[str, ...] = (CATEGORY,)
    split_by: tuple[str, ...] = ()
    subsets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    shares: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"average": self.average, "rows_by": list(self.rows_by), "split_by": list(self.split_by),
                "subsets": {k: dict(v) for k, v in self.subsets.items()}, "shares": dict(self.shares)}


@dataclass(frozen=True)
class Rubric:
    name: str
    criteria: tuple[Criterion, ...]
    scale_min: int
    scale_max: int
    formula: str
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # viescore: "sc", "pq"
    scoring: str = "expectation"
    penalty: Penalty | None = None
    report: ReportSpec = field(default_factory=ReportSpec)
    # Record fields its templates may name that a benchmark's records need not have.
    optional_fields: tuple[str, ...] = ()

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(range(self.scale_min, self.scale_max + 1))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.criteria)

    def criteria_for(self, category: str | None) -> tuple[Criterion, ...]:
        """The criteria a pair of ``category`` is scored on (None: every criterion)."""
        return tuple(c for c in self.criteria if category is None or c.applies(category))

    def overall(self, scores: Mapping[str, float], category: str | None = None) -> float:
        """The pair's overall score from the scores of its category's criteria (all present)."""
        criteria = self.criteria_for(category)
        if self.formula == "min":
            value = min(scores[c.name] for c in criteria)
        elif self.formula == "viescore":
            parts = self.parts(scores, category)
            value = math.sqrt(parts["SC"] * parts["PQ"])
        else:
            total = sum(c.weight_in(category) for c in criteria)
            value = sum(c.weight_in(category) * scores[c.name] for c in criteria) / total
        if self.penalty is not None and scores.get(self.penalty.criterion) == self.penalty.at:
            value = max(float(self.scale_min), value * self.penalty.factor)
        return value

    @property
    def part_names(self) -> tuple[str, ...]:
        """The names ``parts`` gives: VIEScore's SC and PQ, or none."""
        return tuple(g.upper() for g in self.groups) if self.formula == "viescore" else ()

    def parts(self, scores: Mapping[str, float], category: str | None = None) -> dict[str, float]:
        """The scores the overall is made of beside the criteria: VIEScore's SC and PQ; {} otherwise."""
        if self.formula != "viescore":
            return {}
        applicable = {c.name for c in self.criteria_for(category)}
        return {group.upper(): min(scores[n] for n in members if n in applicable)
                for group, members in self.groups.items()}

    def describe(self) -> dict[str, Any]:
        """What the report says about the rubric."""
        weights = {c.name: ({EVERY_CATEGORY: c.weight, **c.category_weights} if c.category_weights else c.weight)
                   for c in self.criteria}
        only_in = {c.name: list(c.categories) for c in self.criteria if c.categories is not None}
        images = {c.name: [s.describe() for s in c.images] for c in self.criteria if c.images != DEFAULT_SOURCES}
        return {"name": self.name, "criteria": list(self.names), "scale": [self.scale_min, self.scale_max],
                "overall": self.formula, "scoring": self.scoring,
                **({"weights": weights} if self.formula == "mean" else {}),
                **({"groups": {k: list(v) for k, v in self.groups.items()}} if self.groups else {}),
                **({"only_in": only_in} if only_in else {}),
                **({"penalty": vars(self.penalty)} if self.penalty else {}),
                **({"images": images} if images else {}),
                **({"optional_fields": list(self.optional_fields)} if self.optional_fields else {}),
                "report": self.report.describe()}


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
    scoring = data.get("scoring", "expectation")
    if scoring not in SCORINGS:
        raise RubricError(f"{source}: scoring must be one of {', '.join(SCORINGS)}, not {shown(scoring)}")
    overall = data.get("overall", {"formula": "mean"})
    formula = overall.get("formula") if isinstance(overall, dict) else None
    if formula not in FORMULAS:
        raise RubricError(f"{source}: overall.formula must be one of {', '.join(FORMULAS)}, not {formula!r}")
    return Rubric(name=name, criteria=criteria, scale_min=scale["min"], scale_max=scale["max"],
                  formula=formula, groups=_groups(source, overall, criteria), scoring=scoring,
                  penalty=_penalty(source, overall.get("penalty"), names, scale),
                  report=_report_spec(source, data.get("report", {})),
                  optional_fields=_optional_fields(source, data.get("fields", {"optional": []})))


def _optional_fields(source: str, raw: Any) -> tuple[str, ...]:
    optional = raw.get("optional") if isinstance(raw, dict) and set(raw) <= {"optional"} else None
    if not (isinstance(optional, list) and all(isinstance(n, str) and n.isidentifier() for n in optional)):
        raise RubricError(f"{source}: fields must be {{\"optional\": [record field names]}}, not {shown(raw)}")
    return tuple(optional)


def _groups(source: str, overall: dict, criteria: tuple[Criterion, ...]) -> dict[str, tuple[str, ...]]:
    if overall["formula"] != "viescore":
        return {}
    names = [c.name for c in criteria]
    groups = {}
    for group in ("sc", "pq"):
        members = overall.get(group)
        if not (isinstance(members, list) and members and set(members) <= set(names)):
            raise RubricError(f"{source}: overall.{group} must list criteria of the rubric "
                              f"({', '.join(names)}), not {members!r}")
        groups[group] = tuple(members)
    # Each group needs a score in every category: its criteria are scored everywhere.
    restricted = [c.name for c in criteria if c.categories is not None]
    if restricted:
        raise RubricError(f"{source}: a viescore rubric scores every criterion in every category "
                          f"({', '.join(restricted)} name categories)")
    return groups


def _penalty(source: str, raw: Any, names: list[str], scale: dict) -> Penalty | None:
    if raw is None:
        return None
    factor = raw.get("factor") if isinstance(raw, dict) else None
    if not (isinstance(raw, dict) and raw.get("criterion") in names and _is_int(raw.get("at"))
            and scale["min"] <= raw["at"] <= scale["max"] and _is_number(factor) and 0 <= factor <= 1):
        raise RubricError(f"{source}: overall.penalty must be {{\"criterion\": one of {', '.join(names)}, "
                          f"\"at\": a score of the scale, \"factor\": a number from 0 to 1}}, not {shown(raw)}")
    return Penalty(raw["criterion"], raw["at"], float(factor))


def _report_spec(source: str, raw: Any) -> ReportSpec:
    where = f"{source}: report"
    if not isinstance(raw, dict):
        raise RubricError(f"{where}: expected a JSON object, not {shown(raw)}")
    average = raw.get("average", "micro")
    if average not in AVERAGES:
        raise RubricError(f"{where}.average must be one of {', '.join(AVERAGES)}, not {shown(average)}")
    rows_by = _field_names(where + ".rows_by", raw.get("rows_by", [CATEGORY]), allow_empty=False)
    split_by = _field_names(where + ".split_by", raw.get("split_by", []), allow_empty=True)
    subsets = raw.get("subsets", {})
    if not (isinstance(subsets, dict) and all(isinstance(v, dict) and v for v in subsets.values())):
        raise RubricError(f"{where}.subsets: a map of name -> {{field: value, ...}}, not {shown(subsets)}")
    shares = raw.get("shares", {})
    if not (isinstance(shares, dict) and all(v in SHARE_CONDITIONS for v in shares.values())):
        raise RubricError(f"{where}.shares: a map of name -> one of {', '.join(SHARE_CONDITIONS)}, "
                          f"not {shown(shares)}")
    return ReportSpec(average=average, rows_by=rows_by, split_by=split_by, subsets=subsets, shares=shares)


def _field_names(where: str, raw: Any, allow_empty: bool) -> tuple[str, ...]:
    if not (isinstance(raw, list) and (raw or allow_empty) and all(isinstance(n, str) and n for n in raw)):
        raise RubricError(f"{where}: a list of record field names, not {shown(raw)}")
    return tuple(raw)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    # NaN fails every comparison; Infinity and 1e999 are read as markers, not numbers.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _criterion(source: str, rubric: str, index: int, raw: Any) -> Criterion:
    where = f"{source}: criteria[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not re.fullmatch(r"[\w-]{1,64}", raw["name"]):
        raise RubricError(f"{where}: needs a name of letters, digits, _ or - (at most 64)")
    prompts = raw.get("prompts", raw["name"])
    if not isinstance(prompts, str) or ".." in PurePosixPath(prompts).parts or prompts.startswith("/"):
        raise RubricError(f"{where}.prompts: a folder inside the rubric's, not {prompts!r}")
    weight, category_weights = _weights(where, raw.get("weight", 1))
    try:
        images = image_sources(f"{where}.images", raw.get("images"))
    except ValueError as exc:
        raise RubricError(str(exc)) from None
    categories = raw.get("categories")
    if categories is not None and not (isinstance(categories, list) and categories
                                       and all(isinstance(c, str) and c for c in categories)):
        raise RubricError(f"{where}.categories: a non-empty list of category names, not {shown(categories)}")
    # A rubric folder's criteria live under it; the built-in default's are the prompts directory's own.
    base = "" if (rubric == DEFAULT_RUBRIC and not prompts) else f"{RUBRICS_DIR}/{rubric}"
    return Criterion(name=raw["name"], prompts=_join(base, prompts).rstrip("/"), weight=weight,
                     category_weights=category_weights,
                     categories=tuple(categories) if categories is not None else None, images=images)


def _weights(where: str, raw: Any) -> tuple[float, dict[str, float]]:
    """A criterion's weight and its per-category weights, from a number or {category: weight}."""
    per_category = raw if isinstance(raw, dict) else {EVERY_CATEGORY: raw}
    for category, weight in per_category.items():
        if not _is_number(weight) or not 0 < weight <= WEIGHT_MAX:
            shape = (f"a map of category -> a positive number at most {WEIGHT_MAX} (\"{EVERY_CATEGORY}\": "
                     f"the others)" if isinstance(raw, dict) else f"a positive number at most {WEIGHT_MAX}")
            raise RubricError(f"{where}.weight: {shape}, not {shown(raw)}")
    default = float(per_category.get(EVERY_CATEGORY, 1))
    return default, {c: float(w) for c, w in per_category.items() if c != EVERY_CATEGORY}


__all__ = ["Rubric", "Criterion", "Penalty", "ReportSpec", "RubricError", "read_rubric_templates",
           "rubric_from_templates", "criterion_prompts", "reasoning_suffix", "DEFAULT_RUBRIC", "PromptTemplateError"]
