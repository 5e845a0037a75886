"""The editbench report: JSON (written atomically), the protocol's tables in Markdown, and a
PNG bar chart of per-category means (with a rubric of several criteria: each criterion's mean,
side by side; with columns by record fields: one bar per column). A category without a score
is drawn as n/a, never as a bar at 0."""

from __future__ import annotations

import io
import statistics
from pathlib import Path
from typing import Any

from producer.editbench.edit_speed import edit_speed
from producer.editbench.protocol_tables import PairLine, protocol_tables
from producer.editbench.report_markdown import report_markdown
from producer.editbench.score_statistics import mean_summary
from shared.artifacts import write_atomic
from shared.editbench.rubric import Rubric, rubric_from_templates
from shared.editbench.run_settings import EditbenchRunSettings
from shared.jsonio import write_json_atomic
from shared.keys import KEY_SEP
from shared.messages import EDIT_STAGE, SCORE_STAGE
from shared.redaction import redact_values
from shared.store import RunStore

# English names for the reference categories, for charts drawn without a CJK font.
GLOSSES = {"物理": "physical", "环境": "environmental", "社会": "social", "因果": "causal",
           "指代": "referential"}
CJK_FONTS = ["Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
             "WenQuanYi Micro Hei", "SimHei", "Microsoft YaHei", "PingFang SC"]


def _stats(scores: list[float]) -> dict[str, Any]:
    """Full precision (rounded only where shown), with the mean's 95% bootstrap interval."""
    if not scores:
        return {"mean": None, "std": None, "min": None, "max": None, "ci95": None}
    return {"mean": statistics.fmean(scores), "std": statistics.pstdev(scores),
            "min": min(scores), "max": max(scores), "ci95": mean_summary(scores)["ci95"]}


def editbench_report(store: RunStore) -> dict[str, Any]:
    meta = store.meta()
    run = EditbenchRunSettings.from_record(meta, store.run_id)
    items = store.items(EDIT_STAGE)
    edited, scored = store.done(EDIT_STAGE), store.done(SCORE_STAGE)
    failures = _failures(store, items)
    failed_keys = {f["key"] for f in failures}
    # The benchmark's own category order, also for categories with no valid pair.
    categories: dict[str, dict[str, Any]] = {
        name: {"pairs": 0, "results": []} for name in meta.get("categories", [])}
    lines: list[PairLine] = []
    for key, item in sorted(items.items(), key=lambda kv: kv[1].get("order", -1)):
        category, _, pair_id = key.partition(KEY_SEP)
        if item.get("invalid") and pair_id == "*":  # an empty category: no pair to count
            continue
        name = item.get("category", category)
        cat = categories.setdefault(name, {"pairs": 0, "results": []})
        cat["pairs"] += 1
        result = _result(item, scored[key], edited[key]) if key in scored else None
        if result is not None:
            cat["results"].append(result)
        lines.append(PairLine(name, item.get("fields", {}), result))
    rubric = rubric_from_templates(run.judge_rubric, run.prompt_templates)
    for name, cat in categories.items():
        scores = [r["score"] for r in cat["results"]]
        cat.update(scored=len(scores), count=len(scores), scores=scores,
                   failed=sum(f["category"] == name for f in failures), **_stats(scores))
        cat["criteria"] = _criteria_stats(rubric, cat["results"], {name: cat["pairs"]})
    all_scores = [r["score"] for c in categories.values() for r in c["results"]]
    all_results = [r for c in categories.values() for r in c["results"]]
    return {
        "run": {**{k: v for k, v in meta.items() if k not in ("categories",)},
                "edit_settings": _edit_settings(edited),
                # The approximate edit modes the run was made with ([]: exact edits).
                "approximate": run.approximate_modes,
                # How the judge's workers ran its experts: grouped_mm, eager, or dense.
                "judge_experts": store.judge_experts()},
        "rubric": {**rubric.describe(), "mode": run.judge_mode, "backend": run.judge_backend},
        "categories": categories,
        "criteria": _criteria_stats(rubric, all_results, {n: c["pairs"] for n, c in categories.items()}),
        "scoring": _sources(all_results),
        "overall": {"n": len(all_scores), **{k: v for k, v in _stats(all_scores).items()
                                            if k in ("mean", "std", "ci95")},
                    "pairs": sum(c["pairs"] for c in categories.values()), "failed": len(failed_keys)},
        "protocol": protocol_tables(rubric, lines, list(categories)),
        "failures": failures,
        "swaps": store.swaps(),
        "phases": _phase_seconds(store),
        "edit_speed": edit_speed(store),
    }


def _result(item: dict[str, Any], scored: dict[str, Any], edited: dict[str, Any]) -> dict[str, Any]:
    """One pair's line: the overall score, each criterion's (how it was read, the rationale in
    the reasoning mode) and, for a one-criterion rubric, its probabilities as before."""
    result = {"pair_id": item["pair_id"], "score": scored["score"], "edited_image": edited["edited_path"],
              "criteria": scored.get("criteria", {})}
    if "fields" in item:  # the benchmark's own record fields (language, subtask, ...)
        result["fields"] = item["fields"]
    if "probabilities" in scored:
        result["probabilities"] = scored["probabilities"]
    for name in ("edit_seconds", "step_cache"):  # step_cache: passes the cache skipped in this edit
        if name in edited:
            result[name] = edited[name]
    return result


def _criteria_stats(rubric: Rubric, results: list[dict[str, Any]], pairs: dict[str, int]) -> dict[str, Any]:
    """Per criterion: n, mean, std (with the mean's 95% interval), and failed (pairs of the
    categories it is scored in, ``pairs`` by category, without a score for it)."""
    out = {}
    for criterion in rubric.criteria:
        scores = [r["criteria"][criterion.name]["score"] for r in results
                  if criterion.name in r.get("criteria", {})]
        stats = _stats(scores)
        applicable = sum(n for category, n in pairs.items() if criterion.applies(category))
        out[criterion.name] = {"n": len(scores), "mean": stats["mean"], "std": stats["std"],
                               "ci95": stats["ci95"], "failed": applicable - len(scores)}
    return out


def _sources(results: list[dict[str, Any]]) -> dict[str, int]:
    """How many criterion scores were read from what: logits, logprobs, or the stated answer."""
    counts: dict[str, int] = {}
    for result in results:
        for criterion in result.get("criteria", {}).values():
            counts[criterion["source"]] = counts.get(criterion["source"], 0) + 1
    return dict(sorted(counts.items()))


def _edit_settings(edited: dict[str, dict]) -> dict[str, Any] | list[dict[str, Any]] | None:
    """The settings the run's edits were made with (family, steps, size, guidance, negative
    prompt): one record, or every distinct one if workers differed; None before any edit."""
    distinct: list[dict[str, Any]] = []
    for record in edited.values():
        if "edit_settings" in record and record["edit_settings"] not in distinct:
            distinct.append(record["edit_settings"])
    return distinct[0] if len(distinct) == 1 else (distinct or None)


def _failures(store: RunStore, items: dict[str, dict]) -> list[dict[str, Any]]:
    out = []
    for stage in (EDIT_STAGE, SCORE_STAGE):
        for key, failure in sorted(store.failed(stage).items()):
            category, _, pair_id = key.partition(KEY_SEP)
            item = items.get(key, {})
            out.append({"key": key, "category": item.get("category", category),
                        "pair_id": item.get("pair_id", pair_id), "stage": stage,
                        "reason": failure["reason"], "attempts": failure["attempts"]})
    return out


def _phase_seconds(store: RunStore) -> dict[str, dict[str, float]]:
    phases: dict[str, dict[str, float]] = {}
    for span in store.phase_times():
        p = phases.setdefault(span["phase"], {"seconds": 0.0, "spans": 0})
        p["seconds"] = round(p["seconds"] + span["end"] - span["start"], 3)
        p["spans"] += 1
    return phases


def write_editbench_report(store: RunStore, output: Path) -> dict[str, Any]:
    """Write the JSON report and, beside it, ``<name>.png`` (the chart of per-category means)
    and ``<name>.md`` (the protocol's tables)."""
    output = Path(output)
    report = redact_values(editbench_report(store))  # stored by earlier versions, or by hand
    chart, markdown = output.with_suffix(".png"), output.with_suffix(".md")
    report["chart"], report["markdown"] = str(chart), str(markdown)
    write_atomic(chart, render_chart(report))
    write_atomic(markdown, report_markdown(report).encode("utf-8"))
    write_json_atomic(output, report)
    return report


def _cjk_font() -> str | None:
    from matplotlib import font_manager

    for family in CJK_FONTS:
        try:
            font_manager.findfont(font_manager.FontProperties(family=family),
                                  fallback_to_default=False)
        except ValueError:
            continue
        return family
    return None


def chart_labels(names: list[str]) -> tuple[list[str], str | None]:
    font = _cjk_font()
    if font or all(name.isascii() for name in names):
        return names, font
    return [GLOSSES.get(n, n if n.isascii() else f"category {i + 1}") for i, n in enumerate(names)], None


def error_bars(summaries: list[dict[str, Any]]) -> list[list[float]]:
    """Matplotlib's ``yerr`` (distances below and above each mean) from each ``ci95``; none where
    the interval is undefined (fewer than two scores)."""
    below, above = [], []
    for s in summaries:
        ci, mean = s.get("ci95"), s.get("mean")
        # max(0, ...): the interval and the mean are computed apart (last-bit differences).
        below.append(max(0.0, mean - ci[0]) if ci else 0.0)
        above.append(max(0.0, ci[1] - mean) if ci else 0.0)
    return [below, above]


def png_bytes(fig) -> bytes:
    """A finished matplotlib figure as PNG bytes (laid out tight); the figure is closed."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def render_chart(report: dict[str, Any]) -> bytes:
    """PNG bytes of ``chart_figure``."""
    return png_bytes(chart_figure(report))


def chart_figure(report: dict[str, Any]):
    """The bar chart of per-category means: with one criterion, each with its 95% interval and
    n; with several, each criterion's mean and the overall side by side; with the protocol's
    columns (a language, a subset), the overall mean of each column side by side. A mean that
    does not exist is marked n/a, with no bar. The caller closes the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["categories"])
    labels, font = chart_labels(names)
    criteria = report["rubric"]["criteria"]
    columns = [c["name"] for c in report["protocol"]["columns"]]
    low, high = report["rubric"]["scale"]
    series = len(columns) if len(columns) > 1 else len(criteria) + (len(criteria) > 1)
    width = 1.3 if series == 1 else 0.35 * series + 0.5
    fig, ax = plt.subplots(figsize=(max(4.0, width * len(names) + 1), 3.6), dpi=100)
    if len(columns) > 1:
        rows = report["protocol"]["tables"].get("category", {}).get("rows", {})
        _grouped_bars(ax, names, {c: [rows.get(n, {}).get(c, {"mean": None}) for n in names] for c in columns})
    elif len(criteria) > 1:
        _grouped_bars(ax, names, {name: [report["categories"][n]["criteria"][name] for n in names]
                                  for name in criteria}
                      | {"overall": [report["categories"][n] for n in names]})
    else:
        _single_bars(ax, report, names)
    ax.set_xticks(range(len(names)), labels, fontfamily=font or "sans-serif")
    ax.set_ylim(0, high * (1.1 if series == 1 else 1.35))
    ax.set_ylabel(f"mean score ({low}-{high})" + (", 95% interval" if series == 1 else ""))
    ax.set_title(_chart_title(report), fontsize=9)
    return fig


def _chart_title(report: dict[str, Any]) -> str:
    protocol = report["protocol"]
    shown = [f"{name} {value:.2f}" for name, value in protocol["headline"].items() if value is not None]
    if not shown:
        return report["run"]["run_id"]
    return f"{report['run']['run_id']}: {protocol['average']} mean " + ", ".join(shown)


def _single_bars(ax, report: dict[str, Any], names: list[str]) -> None:
    cats = [report["categories"][n] for n in names]
    scored = [i for i, cat in enumerate(cats) if cat["mean"] is not None]
    bars = ax.bar(scored, [cats[i]["mean"] for i in scored], color="#4c72b0",
                  yerr=error_bars([cats[i] for i in scored]), capsize=4,
                  error_kw={"elinewidth": 1, "ecolor": "#333333"})
    for bar, i in zip(bars, scored):
        top = (cats[i].get("ci95") or [0, bar.get_height()])[1]
        ax.annotate(f"{cats[i]['mean']:.2f}\nn={cats[i]['count']}", (bar.get_x() + bar.get_width() / 2, top),
                    ha="center", va="bottom", fontsize=8)
    for i, cat in enumerate(cats):
        if cat["mean"] is None:
            ax.annotate(f"n/a\n{cat.get('failed', 0)} failed", (i, 0), ha="center", va="bottom", fontsize=8)


def _grouped_bars(ax, names: list[str], series: dict[str, list[dict[str, Any]]]) -> None:
    """One bar per series in each category's group; n/a where a series has no mean there."""
    step = 0.8 / len(series)
    for i, (label, stats) in enumerate(series.items()):
        xs = [x - 0.4 + step * (i + 0.5) for x in range(len(names))]
        present = [j for j, s in enumerate(stats) if s.get("mean") is not None]
        bars = ax.bar([xs[j] for j in present], [stats[j]["mean"] for j in present], width=step, label=label,
                      color="#555555" if label == "overall" else f"C{i}")
        for bar, j in zip(bars, present):
            ax.annotate(f"{stats[j]['mean']:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=6)
        for j, s in enumerate(stats):
            if s.get("mean") is None:
                ax.annotate("n/a", (xs[j], 0), ha="center", va="bottom", fontsize=6, rotation=90)
    ax.legend(fontsize=7, ncols=min(len(series), 5), loc="upper center")
