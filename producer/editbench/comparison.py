"""Comparing editbench runs from their report files (``python -m producer compare``).

Per run and category: pairs scored, pairs failed, the mean score with its 95% bootstrap
interval. For each run against the first (the baseline): the difference of scores on the pairs
both runs scored (matched by category and pair id), with a paired bootstrap interval and the
pairs won, tied and lost; the pairs only one of the two scored are counted and listed; the
same paired difference per criterion the runs share. The settings that differ between the runs
are listed. Runs judged with different rubrics, scales or scorings are refused unless asked
(their scores are not on one footing); then every output says so. The statistics are in
``producer.editbench.score_statistics``.
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
from shared.editbench.run_settings import EditbenchRunSettings
from shared.errors import InputFileError, shown
from shared.jsonio import read_json, write_json_atomic
from shared.keys import check_run_name

REPORT_NAME = "editbench_report.json"
OVERALL = "overall"
# What a report written before rubrics were recorded was judged with.
EARLIER_RUBRIC = {"name": "default", "scale": [0, 10], "scoring": "expectation"}
# The run settings compared besides those that make a run's identity.
COMPARED_SETTINGS = ("inputs", *EditbenchRunSettings.identity_keys())


@dataclass
class RunScores:
    """What a comparison takes from one run's report."""

    label: str  # the run id, made unique among the runs compared
    report: Path
    inputs: str | None  # the benchmark's content digest
    scores: dict[str, dict[str, float]]  # category -> pair id -> score, in report order
    failed: dict[str, int]  # category -> pairs failed
    approximate: list[str]  # the approximate edit modes the run was made with; [] if exact
    rubric: dict[str, Any]  # the report's rubric: name, scale, scoring, criteria
    settings: dict[str, Any]  # the report's run settings (COMPARED_SETTINGS among them)
    # category -> pair id -> criterion -> score
    criteria: dict[str, dict[str, dict[str, float]]]


class ApproximateComparisonError(ValueError):
    """Runs made with different approximate edit modes were set side by side unasked."""


class RubricComparisonError(ValueError):
    """Runs judged with different rubrics, scales or scorings were set side by side unasked."""


def report_path(run: str, work_dir: Path | None = None) -> Path:
    """The report of ``run``: a report file, a run directory holding ``REPORT_NAME``, or a run
    name (its report where ``run`` writes it, under ``work_dir``)."""
    path = Path(run)
    if path.is_dir():
        return path / REPORT_NAME
    if path.exists() or work_dir is None:
        return path
    try:
        check_run_name(run)
    except ValueError:
        return path  # not a name either: read_json says the file is missing
    return Path(work_dir) / run / REPORT_NAME


def load_run(path: Path, work_dir: Path | None = None) -> RunScores:
    """A run's scores from its report file, the run directory holding ``REPORT_NAME``, or a run
    name (``report_path``).

    Raises InputFileError naming the file when it is missing, unreadable or not a report.
    """
    path = report_path(str(path), work_dir)
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
    rubric = data.get("rubric") if isinstance(data.get("rubric"), dict) else EARLIER_RUBRIC
    return RunScores(run["run_id"], path, inputs if isinstance(inputs, str) else None, scores, failed,
                     approximate_modes(run), {**EARLIER_RUBRIC, **rubric}, run,
                     {name: _criterion_scores(cat) for name, cat in categories.items()})


def _criterion_scores(cat: dict[str, Any]) -> dict[str, dict[str, float]]:
    """pair id -> criterion -> score, where the report has them (numbers only)."""
    out: dict[str, dict[str, float]] = {}
    for result in cat["results"]:
        criteria = result.get("criteria")
        if isinstance(criteria, dict):
            out[result["pair_id"]] = {name: float(c["score"]) for name, c in criteria.items()
                                      if isinstance(c, dict) and _is_number(c.get("score"))}
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


def compare_runs(runs: list[RunScores], allow_approximate: bool = False,
                 allow_rubrics: bool = False) -> dict[str, Any]:
    """The comparison, as the JSON that ``compare --output`` writes.

    Raises ApproximateComparisonError if the runs were made with different approximate edit
    modes (an FP8 run against an exact one, say), unless ``allow_approximate``: a score
    difference would then mix the method's cost with the editor's. Raises
    RubricComparisonError if they were judged with different rubrics, scales or scorings,
    unless ``allow_rubrics``.
    """
    check_approximate(runs, allow_approximate)
    mixed = check_rubrics(runs, allow_rubrics)
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
        "differing_settings": differing_settings(runs),
        # Set when runs of different rubrics, scales or scorings were compared on request.
        "mixed_rubrics": mixed,
        "notes": ([f"WARNING: {mixed}"] if mixed else []) + notes
                 + [f"{run.label} was edited with approximate modes: {', '.join(run.approximate)}"
                    for run in runs if run.approximate],
    }


def _rubric_key(run: RunScores) -> tuple:
    rubric = run.rubric
    return (rubric.get("name"), tuple(rubric.get("scale", ())), rubric.get("scoring"))


def check_rubrics(runs: list[RunScores], allow: bool) -> str | None:
    """None if the runs share rubric, scale and scoring; else what differs, which raises
    RubricComparisonError unless ``allow``."""
    if len({_rubric_key(run) for run in runs}) <= 1:
        return None
    listed = "; ".join(f"{run.label}: rubric {run.rubric.get('name')}, scale "
                       f"{'-'.join(str(v) for v in run.rubric.get('scale', ()))}, "
                       f"scoring {run.rubric.get('scoring')}" for run in runs)
    what = f"these runs were judged with different rubrics, scales or scorings ({listed})"
    if not allow:
        raise RubricComparisonError(f"{what}: their scores are not on one footing. Add "
                                    "--allow-mixed-rubrics to compare them anyway")
    return f"{what}; their differences are not on one footing"


def differing_settings(runs: list[RunScores]) -> dict[str, dict[str, Any]]:
    """setting -> run -> value, for each setting (of COMPARED_SETTINGS, and the rubric's scale
    and scoring) whose value is not the same in every run."""
    out = {}
    for name in COMPARED_SETTINGS:
        values = {run.label: run.settings.get(name) for run in runs}
        if len({repr(v) for v in values.values()}) > 1:
            out[name] = values
    for name in ("scale", "scoring"):
        values = {run.label: run.rubric.get(name) for run in runs}
        if len({repr(v) for v in values.values()}) > 1:
            out[f"rubric {name}"] = values
    return out


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
            "approximate": run.approximate, "rubric": run.rubric.get("name"), "scale": list(run.rubric["scale"]),
            "scoring": run.rubric.get("scoring"), "categories": per_category,
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
    return {"run": run.label, "baseline": baseline.label, "categories": per_category, OVERALL: overall,
            "criteria": _criteria_differences(baseline, run, categories)}


def _criteria_differences(baseline: RunScores, run: RunScores, categories: list[str]) -> dict[str, Any]:
    """Per criterion both runs' rubrics have: the paired difference over the pairs both scored on it."""
    shared = [c for c in baseline.rubric.get("criteria", []) if c in run.rubric.get("criteria", [])]
    out = {}
    for criterion in shared:
        base, other = [], []
        for name in categories:
            theirs = run.criteria.get(name, {})
            for pair, scores in baseline.criteria.get(name, {}).items():
                if criterion in scores and criterion in theirs.get(pair, {}):
                    base.append(scores[criterion])
                    other.append(theirs[pair][criterion])
        out[criterion] = paired_difference(base, other)
    return out


def comparison_markdown(comparison: dict[str, Any]) -> str:
    method = comparison["method"]
    runs = comparison["runs"]
    lines = ["# editbench run comparison", ""]
    if comparison.get("mixed_rubrics"):
        lines += [f"**WARNING: {comparison['mixed_rubrics']}.**", ""]
    lines += [f"Means with {method['confidence']:.0%} {method['interval']} intervals "
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
        if comp.get("criteria"):
            lines += ["", "Per criterion, paired on the pairs both scored on it:", "",
                      f"| criterion | pairs | difference [{method['confidence']:.0%} CI] | won / tied / lost |",
                      "|---|---|---|---|"]
            lines += [f"| {name} | {c['n']} | {_difference_cell(c)} | {c['won']} / {c['tied']} / {c['lost']} |"
                      for name, c in comp["criteria"].items()]
    if comparison.get("differing_settings"):
        lines += ["", "## Settings that differ", "", "| setting | " + " | ".join(r["run"] for r in runs) + " |",
                  "|---" * (len(runs) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(_setting_cell(values.get(r["run"])) for r in runs) + " |"
                  for name, values in comparison["differing_settings"].items()]
    if comparison["notes"]:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in comparison["notes"]]
    return "\n".join(lines) + "\n"


def _setting_cell(value: Any) -> str:
    return "-" if value is None else shown(value, 60).replace("|", "\\|")


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
    """PNG bytes of ``comparison_figure``."""
    return png_bytes(comparison_figure(comparison))


def comparison_figure(comparison: dict[str, Any]):
    """Per category (and overall), one bar per run, each with its interval; n/a where a run has
    no score. The caller closes the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*comparison["categories"], OVERALL]
    labels, font = chart_labels(names)
    runs = comparison["runs"]
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(5.0, (0.5 + 0.35 * len(runs)) * len(names) + 1.5), 4.0), dpi=100)
    for i, run in enumerate(runs):
        summaries = [run[OVERALL] if n == OVERALL else run["categories"][n] for n in names]
        xs = [x - 0.4 + width * (i + 0.5) for x in range(len(names))]
        # A category a run has no score in gets no bar (n/a), never one at 0.
        present = [j for j, summary in enumerate(summaries) if summary["mean"] is not None]
        ax.bar([xs[j] for j in present], [summaries[j]["mean"] for j in present], width, label=run["run"],
               color=f"C{i}", yerr=error_bars([summaries[j] for j in present]), capsize=3,
               error_kw={"elinewidth": 1, "ecolor": "#333333"})
        for j, summary in enumerate(summaries):
            if summary["mean"] is None:
                ax.annotate("n/a", (xs[j], 0), ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(range(len(names)), labels, fontfamily=font or "sans-serif")
    top = max(run["scale"][1] for run in runs)
    ax.set_ylim(0, top * 1.1)
    scales = sorted({f"{run['scale'][0]}-{run['scale'][1]}" for run in runs})
    ax.set_ylabel(f"mean score ({', '.join(scales)}), {comparison['method']['confidence']:.0%} interval")
    if comparison.get("mixed_rubrics"):
        ax.set_title("WARNING: runs of different rubrics, scales or scorings", fontsize=9, color="#aa0000")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


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
