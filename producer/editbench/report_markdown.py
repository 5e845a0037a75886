"""The editbench report's Markdown: the rubric, how scores were read, and the protocol's tables
(one per row key and column: each row's counts and means, then the macro and micro averages).
A mean that does not exist is n/a, never 0."""

from __future__ import annotations

from typing import Any


def report_markdown(report: dict[str, Any]) -> str:
    rubric, protocol = report["rubric"], report["protocol"]
    low, high = rubric["scale"]
    sources = ", ".join(f"{n} from {source}" for source, n in report["scoring"].items()) or "none yet"
    lines = [f"# editbench report: {report['run']['run_id']}", "",
             f"Rubric `{rubric['name']}`: criteria {', '.join(rubric['criteria'])} on {low}-{high}; "
             f"overall by {rubric['overall']}. Scoring: {_scoring(rubric['scoring'])} "
             f"(criterion scores read: {sources}).",
             f"Headline: the {protocol['average']} average ({_average(protocol['average'])}).", "",
             "| column | headline |", "|---|---|"]
    lines += [f"| {name} | {_number(value)} |" for name, value in protocol["headline"].items()]
    for row_key, table in protocol["tables"].items():
        for column in protocol["columns"]:
            lines += ["", f"## {column['name']}, by {row_key}", ""] + _table(table, column["name"], row_key)
    if report["failures"]:
        lines += ["", f"{len(report['failures'])} pair(s) failed: see `failures` in the JSON report."]
    return "\n".join(lines) + "\n"


def _scoring(scoring: str) -> str:
    return {"stated": "the integer the judge states",
            "expectation": "the expectation over the judge's probabilities"}.get(scoring, scoring)


def _average(average: str) -> str:
    return {"macro": "mean of the rows' means", "micro": "mean over the scored pairs"}.get(average, average)


def _table(table: dict[str, Any], column: str, row_key: str) -> list[str]:
    sample = table["micro"][column]
    measures = [*sample["criteria"], *sample["parts"], "overall", *sample["shares"]]
    lines = [f"| {row_key} | pairs | scored | failed | " + " | ".join(measures) + " |",
             "|---" * (len(measures) + 4) + "|"]
    for row, cells in table["rows"].items():
        cell = cells[column]
        lines.append(f"| {row} | {cell['pairs']} | {cell['scored']} | {cell['failed']} | "
                     + " | ".join(_number(v) for v in _values(cell)) + " |")
    macro, micro = table["macro"][column], table["micro"][column]
    lines.append(f"| **macro** ({macro['rows']} rows with a score) | | | | "
                 + " | ".join(_number(v) for v in _values(macro)) + " |")
    lines.append(f"| **micro** | {micro['pairs']} | {micro['scored']} | {micro['failed']} | "
                 + " | ".join(_number(v) for v in _values(micro)) + " |")
    return lines


def _values(cell: dict[str, Any]) -> list[float | None]:
    return [*cell["criteria"].values(), *cell["parts"].values(), cell["mean"], *cell["shares"].values()]


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
