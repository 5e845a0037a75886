"""The protocol's tables of an editbench report: the means a benchmark's headline numbers are
made of, as its rubric's ``report`` says (``shared/editbench/rubric.py``).

A table has one row per category (or per value of a record field such as RISEBench's
``subtask``) and one column per slice of the pairs: every pair, or per value of the split
fields (GEdit's ``language``), each also narrowed to the named subsets (GEdit's
``intersection``). A cell counts the slice's pairs of that row, scored and failed, with the
mean overall score, each criterion's mean, the formula's parts (VIEScore's SC and PQ) and the
shares of pairs meeting the rubric's conditions. Under each table: per column the macro
average (the mean of the rows' means, over the rows with a score) and the micro average (over
the scored pairs). A row without a score has no mean (None, shown as n/a), never 0.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from shared.editbench.rubric import CATEGORY, Rubric

# What the columns are called when no field splits them.
EVERY_PAIR = "all"


@dataclass(frozen=True)
class PairLine:
    """One pair as the tables see it: its category, its record fields and its scored result
    (None when it failed or is not scored yet)."""

    category: str
    fields: dict[str, Any]
    result: dict[str, Any] | None


@dataclass(frozen=True)
class Column:
    name: str
    values: dict[str, Any]  # split field -> value
    subset: str | None  # the rubric's subset narrowing it, if any

    def holds(self, line: PairLine, rubric: Rubric) -> bool:
        wanted = {**self.values, **(rubric.report.subsets[self.subset] if self.subset else {})}
        return all(line.fields.get(name) == value for name, value in wanted.items())

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "fields": self.values, "subset": self.subset}


def protocol_tables(rubric: Rubric, lines: list[PairLine], categories: list[str]) -> dict[str, Any]:
    """The report's ``protocol`` section; ``categories`` in the benchmark's order (also those
    without pairs)."""
    spec = rubric.report
    columns = _columns(rubric, lines)
    tables = {}
    for row_key in spec.rows_by:
        rows = _row_values(row_key, lines, categories)
        cells = {row: {c.name: _cell(rubric, [ln for ln in lines if _row_of(row_key, ln) == row
                                              and c.holds(ln, rubric)]) for c in columns}
                 for row in rows}
        tables[row_key] = {
            "rows": cells,
            "macro": {c.name: _macro(rubric, [cells[row][c.name] for row in rows]) for c in columns},
            "micro": {c.name: _cell(rubric, [ln for ln in lines if c.holds(ln, rubric)]) for c in columns}}
    first = tables[spec.rows_by[0]]
    return {"scoring": rubric.scoring, "average": spec.average, "rows_by": list(spec.rows_by),
            "columns": [c.describe() for c in columns], "tables": tables,
            # The protocol's headline per column: its average of the first table's overall means.
            "headline": {c.name: first[spec.average][c.name]["mean"] for c in columns}}


def _columns(rubric: Rubric, lines: list[PairLine]) -> list[Column]:
    split = rubric.report.split_by
    combos: list[dict[str, Any]] = []
    for line in lines:
        combo = {name: line.fields.get(name) for name in split}
        if combo not in combos:
            combos.append(combo)
    columns = []
    for combo in combos or [{}]:
        base = " / ".join(_shown_value(name, value) for name, value in combo.items()) or EVERY_PAIR
        columns.append(Column(base, combo, None))
        for subset in rubric.report.subsets:
            columns.append(Column(subset if base == EVERY_PAIR else f"{base} / {subset}", combo, subset))
    return columns


def _shown_value(name: str, value: Any) -> str:
    return f"no {name}" if value is None else str(value)


def _row_values(row_key: str, lines: list[PairLine], categories: list[str]) -> list[str]:
    values = list(categories) if row_key == CATEGORY else []
    for line in lines:
        value = _row_of(row_key, line)
        if value not in values:
            values.append(value)
    return values


def _row_of(row_key: str, line: PairLine) -> str:
    if row_key == CATEGORY:
        return line.category
    value = line.fields.get(row_key)
    return _shown_value(row_key, value)


def _cell(rubric: Rubric, lines: list[PairLine]) -> dict[str, Any]:
    """Counts and means of ``lines`` (a row of a column, or a whole column)."""
    results = [ln.result for ln in lines if ln.result is not None]
    parts = [rubric.parts(_criterion_scores(ln.result), ln.category) for ln in lines
             if ln.result is not None and _complete(rubric, ln)]
    return {"pairs": len(lines), "scored": len(results), "failed": len(lines) - len(results),
            "mean": _mean([r["score"] for r in results]),
            "criteria": {name: _mean([r["criteria"][name]["score"] for r in results
                                      if name in r.get("criteria", {})]) for name in rubric.names},
            "parts": {name: _mean([p[name] for p in parts]) for name in rubric.part_names},
            "shares": {name: _mean([float(_meets(rubric, condition, r)) for r in results])
                       for name, condition in rubric.report.shares.items()}}


def _macro(rubric: Rubric, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of the rows' means, each measure over the rows that have one."""
    def over(values: list[float | None]) -> float | None:
        return _mean([v for v in values if v is not None])

    names = {"criteria": rubric.names, "parts": rubric.part_names, "shares": tuple(rubric.report.shares)}
    with_score = sum(c["mean"] is not None for c in cells)
    return {"rows": with_score, "rows_without_score": len(cells) - with_score,
            "mean": over([c["mean"] for c in cells]),
            **{group: {name: over([c[group][name] for c in cells]) for name in members}
               for group, members in names.items()}}


def _meets(rubric: Rubric, condition: str, result: dict[str, Any]) -> bool:
    # The only condition so far: "all_criteria_at_max", every criterion the pair was scored on.
    scores = _criterion_scores(result)
    return bool(scores) and all(score == rubric.scale_max for score in scores.values())


def _complete(rubric: Rubric, line: PairLine) -> bool:
    """Whether the pair has a score for each criterion of its category (a record of an earlier
    rubric may not)."""
    return all(c.name in line.result.get("criteria", {}) for c in rubric.criteria_for(line.category))


def _criterion_scores(result: dict[str, Any]) -> dict[str, float]:
    return {name: c["score"] for name, c in result.get("criteria", {}).items()}


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None
