"""Comparing editbench runs from their report files (``python -m producer compare``).

Per run and category: pairs scored, pairs failed, the mean score with its 95% bootstrap
interval. For each run against the first (the baseline): the difference of scores on the pairs
both runs scored (matched by category and pair id), with a paired bootstrap interval and the
pairs won, tied and lost; the pairs only one of the two scored are counted and listed. The
statistics are in ``producer.editbench.score_statistics``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producer.editbench.report import chart_labels, error_bars, png_bytes
from producer.editbench.score_statistics import (CONFIDENCE, RESAMPLES, SEED, TIE, mean_summary,
                                                 paired_difference)
from shared.artifacts import write_atomic
from shared.editbench.approximate import approximate_modes
from shared.editbench.rubric import SCALE_LIMITS
from shared.errors import InputFileError, shown
from shared.jsonio import read_json, write_json_atomic

REPORT_NAME = "editbench_report.json"
OVERALL = "overall"


@dataclass
class RunScores:
    """What a comparison takes from one run's report."""

    label: str  # the run id, made unique among the runs compared
    report: Path
    inputs: str | None  # the benchmark's content digest
    scores: dict[str, dict[str, float]]  # category -> pair id -> score, in report order
    failed: dict[str, int]  # category -> pairs failed
    approximate: list[str]  # the approximate edit modes the run was made with; [] if exact


class ApproximateComparisonError(ValueError):
    """Runs made with different approximate edit modes were set side by side unasked."""


def load_run(path: Path) -> RunScores:
    """A run's scores from its report file, or from the run directory holding ``REPORT_NAME``.

    Raises InputFileError naming the file when it is missing, unreadable or not a report.
    """
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_NAME
    data = read_json(path)
    run = data.get("run") if isinstance(data, dict) else None
    categories = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(run, dict) or not isinstance(run.get("run_id"), str) or not isinstance(categories, dict):
        raise InputFileError(path, "not an editbench report: expected a JSON object with 'run' "
                                   "(holding 'run_id') and 'categories' (python -m producer report editbench)")
    scores: dict[str, dict[str, float]] = {}
    failed: dict[str, int] = {}
    for name, cat in categories.items():
        scores[name] = _category_scores(path, name, cat)
        failed[name] = cat.get("failed", 0) if isinstance(cat.get("failed"), int) else 0
    inputs = run.get("inputs")
    return RunScores(run["run_id"], path, inputs if isinstance(inputs, str) else None, scores, failed,
                     approximate_modes(run))


def _category_scores(path: Path, name: str, cat: object) -> dict[str, float]:
    results = cat.get("results") if isinstance(cat, dict) else None
    if not isinstance(results, list):
        raise InputFileError(path, f"not an editbench report: category {shown(name)} has no 'results' list")
    scores: dict[str, float] = {}
    for i, result in enumerate(results):
        pair_id = result.get("pair_id") if isinstance(result, dict) else None
        score = result.get("score") if isinstance(result, dict) else None
        if (not isinstance(pair_id, str) or isinstance(score, bool) or not isinstance(score, (int, float))
                or not SCALE_LIMITS[0] <= score <= SCALE_LIMITS[1]):  # NaN fails the comparison too
            raise InputFileError(path, f"category {shown(name)}: results[{i}]: expected a 'pair_id' "
                                       f"string and a 'score' from {SCALE_LIMITS[0]} to {SCALE_LIMITS[1]}, "
                                       f"got {shown(result)}")
        scores[pair_id] = float(score)
    return scores


def compare_runs(runs: list[RunScores], allow_approximate: bool = False) -> dict[str, Any]:
    """The comparison, as the JSON that ``compare --output`` writes.

    Raises ApproximateComparisonError if the runs were made with different approximate edit
    modes (an FP8 run against an exact one, say), unless ``allow_approximate``: a score
    difference would then mix the method's cost with the editor's.
    """
    check_approximate(runs, allow_approximate)
    _unique_labels(runs)
    categories = list(dict.fromkeys(name for run in runs for name in run.scores))
    baseline = runs[0]
    notes = [f"{run.label} and {baseline.label} were run on different benchmark files "
             f"(input digests {run.inputs} and {baseline.inputs})"
             for run in runs[1:] if run.inputs != baseline.inputs]
    return {
        "method": {"interval": "percentile bootstrap", "confidence": CONFIDENCE, "resamples": RESAMPLES,
                   "seed": SEED, "tie": TIE},
        "categories": categories,
        "runs": [_run_summary(run, categories) for run in runs],
        "comparisons": [_comparison(baseline, run, categories) for run in runs[1:]],
        "notes": notes + [f"{run.label} was edited with approximate modes: {', '.join(run.approximate)}"
                          for run in runs if run.approximate],
    }


def check_approximate(runs: list[RunScores], allow: bool) -> None:
    modes = {run.label: run.approximate for run in runs}
    if allow or len({tuple(m) for m in modes.values()}) <= 1:
        return
    listed = "; ".join(f"{label}: {', '.join(m) or 'exact'}" for label, m in modes.items())
    raise ApproximateComparisonError(
        f"these runs were edited with different approximate modes ({listed}): their score "
        "differences would include what the approximation costs. Add --allow-approximate to "
        "compare them anyway")


def _unique_labels(runs: list[RunScores]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f"{run.label} ({seen[run.label]})"


def _run_summary(run: RunScores, categories: list[str]) -> dict[str, Any]:
    """One run's means per category and overall, with its approximate modes ([] if exact)."""
    per_category = {}
    for name in categories:
        summary = mean_summary(list(run.scores.get(name, {}).values()))
        per_category[name] = {"scored": summary["n"], "failed": run.failed.get(name, 0),
                              "mean": summary["mean"], "ci95": summary["ci95"], "in_report": name in run.scores}
    overall = mean_summary([s for scores in run.scores.values() for s in scores.values()])
    return {"run": run.label, "report": str(run.report), "inputs": run.inputs,
            "approximate": run.approximate, "categories": per_category,
            OVERALL: {"scored": overall["n"], "failed": sum(run.failed.values()), "mean": overall["mean"],
                      "ci95": overall["ci95"]}}


def _comparison(baseline: RunScores, run: RunScores, categories: list[str]) -> dict[str, Any]:
    per_category = {}
    every_base: list[float] = []
    every_run: list[float] = []
    for name in categories:
        base, other = baseline.scores.get(name, {}), run.scores.get(name, {})
        both = [pair for pair in base if pair in other]
        every_base += [base[p] for p in both]
        every_run += [other[p] for p in both]
        per_category[name] = {**paired_difference([base[p] for p in both], [other[p] for p in both]),
                              "only_in_baseline": [p for p in base if p not in other],
                              "only_in_run": [p for p in other if p not in base]}
    overall = paired_difference(every_base, every_run)
    overall["only_in_baseline"] = sum(len(c["only_in_baseline"]) for c in per_category.values())
    overall["only_in_run"] = sum(len(c["only_in_run"]) for c in per_category.values())
    return {"run": run.label, "baseline": baseline.label, "categories": per_category, OVERALL: overall}


def comparison_markdown(comparison: dict[str, Any]) -> str:
    method = comparison["method"]
    runs = comparison["runs"]
    lines = ["# editbench run comparison", "",
             f"Means with {method['confidence']:.0%} {method['interval']} intervals "
             f"({method['resamples']:,} resamples, seed {method['seed']}); n = pairs scored.", "",
             "| category | " + " | ".join(r["run"] for r in runs) + " |",
             "|---" * (len(runs) + 1) + "|"]
    for name in [*comparison["categories"], OVERALL]:
        cells = [_mean_cell(r[OVERALL] if name == OVERALL else r["categories"][name]) for r in runs]
        lines.append(f"| {_row_name(name)} | " + " | ".join(cells) + " |")
    for comp in comparison["comparisons"]:
        base, run = comp["baseline"], comp["run"]
        lines += ["", f"## {run} − {base}", "",
                  f"Paired on the pairs both scored (matched by category and pair id); won / tied / lost "
                  f"from {run}'s side (tied: within {method['tie']:g}).", "",
                  f"| category | pairs | difference [{method['confidence']:.0%} CI] | won / tied / lost | "
                  f"scored only in {base} | scored only in {run} |",
                  "|---|---|---|---|---|---|"]
        for name in [*comparison["categories"], OVERALL]:
            c = comp[OVERALL] if name == OVERALL else comp["categories"][name]
            only_base, only_run = (c["only_in_baseline"], c["only_in_run"]) if name == OVERALL else (
                len(c["only_in_baseline"]), len(c["only_in_run"]))
            lines.append(f"| {_row_name(name)} | {c['n']} | {_difference_cell(c)} | "
                         f"{c['won']} / {c['tied']} / {c['lost']} | {only_base} | {only_run} |")
    if comparison["notes"]:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in comparison["notes"]]
    return "\n".join(lines) + "\n"


def _row_name(name: str) -> str:
    return f"**{name}**" if name == OVERALL else name


def _mean_cell(summary: dict[str, Any]) -> str:
    if summary["mean"] is None:
        return f"- (n=0, {summary['failed']} failed)"
    ci = summary["ci95"]
    interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    return f"{summary['mean']:.2f}{interval} (n={summary['scored']}, {summary['failed']} failed)"


def _difference_cell(diff: dict[str, Any]) -> str:
    if diff["mean_difference"] is None:
        return "-"
    ci = diff["ci95"]
    interval = f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""
    return f"{diff['mean_difference']:+.2f}{interval}"


def render_comparison_chart(comparison: dict[str, Any]) -> bytes:
    """PNG bytes: per category (and overall), one bar per run, each with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*comparison["categories"], OVERALL]
    labels, font = chart_labels(names)
    runs = comparison["runs"]
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(5.0, (0.5 + 0.35 * len(runs)) * len(names) + 1.5), 4.0), dpi=100)
    try:
        for i, run in enumerate(runs):
            summaries = [run[OVERALL] if n == OVERALL else run["categories"][n] for n in names]
            xs = [x - 0.4 + width * (i + 0.5) for x in range(len(names))]
            ax.bar(xs, [s["mean"] or 0.0 for s in summaries], width, label=run["run"],
                   yerr=error_bars(summaries), capsize=3, error_kw={"elinewidth": 1, "ecolor": "#333333"})
        ax.set_xticks(range(len(names)), labels, fontfamily=font or "sans-serif")
        ax.set_ylim(0, 11)
        ax.set_ylabel(f"mean score (0-10), {comparison['method']['confidence']:.0%} interval")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return png_bytes(fig)
    finally:
        plt.close(fig)


def comparison_files(output: Path) -> tuple[Path, Path]:
    """The Markdown table and the chart written beside ``output`` (the JSON)."""
    output = Path(output)
    markdown, chart = output.with_suffix(".md"), output.with_suffix(".png")
    if output in (markdown, chart):
        raise InputFileError(output, "--output names the comparison's JSON file (FILE.json); "
                                     "FILE.md and FILE.png are written beside it")
    return markdown, chart


def write_comparison(comparison: dict[str, Any], output: Path) -> tuple[Path, Path]:
    """Write the JSON at ``output`` and, beside it, the Markdown table and the chart (atomically)."""
    markdown, chart = comparison_files(output)
    write_atomic(chart, render_comparison_chart(comparison))
    write_atomic(markdown, comparison_markdown(comparison).encode("utf-8"))
    write_json_atomic(Path(output), comparison)
    return markdown, chart
