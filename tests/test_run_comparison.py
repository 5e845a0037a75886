"""Comparing editbench runs: intervals checked against a bootstrap written out here and against
the normal approximation; pairs matched by category and pair id, the unmatched counted;
``python -m producer compare`` writes JSON, Markdown and a chart, or prints the Markdown."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_producer
from producer.editbench.comparison import (RubricComparisonError, compare_runs, comparison_figure, comparison_markdown,
                                           load_run)
from producer.editbench.report import error_bars
from producer.editbench.score_statistics import mean_ci, paired_difference
from shared.errors import InputFileError

RNG = np.random.default_rng(7)
SCORES = np.clip(RNG.normal(6.0, 2.0, size=40), 0, 10)


def percentile_bootstrap(values: np.ndarray, resamples: int = 40_000, seed: int = 3) -> tuple[float, float]:
    """The textbook percentile bootstrap of the mean, independent of the code under test."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def test_the_mean_interval_matches_a_percentile_bootstrap_written_out_by_hand():
    low, high = mean_ci(SCORES)
    ref_low, ref_high = percentile_bootstrap(SCORES)
    # Both are Monte Carlo estimates (10,000 and 40,000 resamples): they agree to ~1% of the
    # standard error (0.3 here), not to the last digit.
    assert low == pytest.approx(ref_low, abs=0.02) and high == pytest.approx(ref_high, abs=0.02)
    assert low < SCORES.mean() < high
    assert mean_ci(SCORES) == (low, high)  # a fixed seed: the same scores, the same interval


def test_the_mean_interval_of_a_large_sample_is_the_normal_one():
    values = np.random.default_rng(11).normal(5.0, 2.0, size=2_000)
    half_width = 1.959964 * values.std() / np.sqrt(values.size)
    low, high = mean_ci(values)
    assert low == pytest.approx(values.mean() - half_width, abs=0.006)
    assert high == pytest.approx(values.mean() + half_width, abs=0.006)


def test_degenerate_samples():
    assert mean_ci([4.0, 4.0, 4.0]) == (4.0, 4.0)
    assert mean_ci([4.0]) is None and mean_ci([]) is None


def test_a_paired_difference_is_the_bootstrap_of_the_differences():
    other = np.clip(SCORES + np.random.default_rng(5).normal(0.3, 0.5, size=SCORES.size), 0, 10)
    diff = paired_difference(SCORES, other)
    differences = other - SCORES
    ref_low, ref_high = percentile_bootstrap(differences)
    assert diff["n"] == 40 and diff["mean_difference"] == pytest.approx(differences.mean(), abs=1e-12)
    assert diff["ci95"][0] == pytest.approx(ref_low, abs=0.01) and diff["ci95"][1] == pytest.approx(ref_high, abs=0.01)
    assert diff["won"] == int((differences > 1e-6).sum()) and diff["lost"] == int((differences < -1e-6).sum())
    assert diff["won"] + diff["tied"] + diff["lost"] == 40
    # Pairing removes the spread between pairs: far narrower than the runs' own intervals.
    assert diff["ci95"][1] - diff["ci95"][0] < (mean_ci(SCORES)[1] - mean_ci(SCORES)[0]) / 2

    shifted = paired_difference([1.0, 5.0, 9.0], [1.5, 5.5, 9.0])
    assert (shifted["won"], shifted["tied"], shifted["lost"]) == (2, 1, 0)
    assert shifted["mean_difference"] == pytest.approx(1 / 3)


def test_error_bars_are_the_distances_to_the_interval():
    assert error_bars([{"mean": 5.0, "ci95": [4.0, 5.5]}, {"mean": 7.0, "ci95": None}]) == [[1.0, 0.0], [0.5, 0.0]]


def report(run_id: str, inputs: str, categories: dict[str, dict[str, float]], failed: dict[str, int] | None = None,
           rubric: dict | None = None, settings: dict | None = None) -> dict:
    """A report in the format ``producer.editbench.report`` writes (the fields compare reads)."""
    failed = failed or {}
    return {"run": {"run_id": run_id, "job": "editbench", "inputs": inputs, **(settings or {})},
            **({"rubric": rubric} if rubric else {}),
            "categories": {name: {"pairs": len(scores) + failed.get(name, 0), "scored": len(scores),
                                  "failed": failed.get(name, 0),
                                  "results": [{"pair_id": p, "score": s} for p, s in scores.items()]}
                           for name, scores in categories.items()},
            "overall": {}, "failures": []}


def write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name / "editbench_report.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def two_runs(tmp_path) -> tuple[Path, Path]:
    base = report("base", "d1", {"物理": {"p1": 5.0, "p2": 6.0, "p3": 7.0}, "环境": {"e1": 2.0, "e2": 3.0}})
    # p3 failed in the new run, p4 is new; e1 ties, e2 is lost; 社会 exists only in the new run.
    new = report("new", "d1", {"物理": {"p1": 6.0, "p2": 6.5, "p4": 9.0}, "环境": {"e1": 2.0, "e2": 1.0},
                               "社会": {"s1": 4.0}}, failed={"物理": 1})
    return write(tmp_path, "base", base), write(tmp_path, "new", new)


def test_pairs_are_matched_by_category_and_pair_id_and_the_others_counted(two_runs):
    base_path, new_path = two_runs
    comparison = compare_runs([load_run(base_path), load_run(new_path.parent)])  # a run directory works too
    assert comparison["categories"] == ["物理", "环境", "社会"]
    base, new = comparison["runs"]
    assert base["categories"]["物理"]["mean"] == 6.0 and base["categories"]["物理"]["scored"] == 3
    assert new["categories"]["物理"]["failed"] == 1
    assert base["categories"]["社会"] == {"scored": 0, "failed": 0, "mean": None, "ci95": None, "in_report": False}
    assert new["overall"]["scored"] == 6 and new["overall"]["failed"] == 1

    [comp] = comparison["comparisons"]
    assert (comp["run"], comp["baseline"]) == ("new", "base")
    physics = comp["categories"]["物理"]
    assert physics["n"] == 2 and physics["mean_difference"] == pytest.approx(0.75)
    assert (physics["won"], physics["tied"], physics["lost"]) == (2, 0, 0)
    assert physics["only_in_baseline"] == ["p3"] and physics["only_in_run"] == ["p4"]
    env = comp["categories"]["环境"]
    assert (env["won"], env["tied"], env["lost"]) == (0, 1, 1)
    assert comp["categories"]["社会"]["n"] == 0 and comp["categories"]["社会"]["only_in_run"] == ["s1"]
    overall = comp["overall"]
    assert overall["n"] == 4 and (overall["only_in_baseline"], overall["only_in_run"]) == (1, 2)
    assert comparison["notes"] == []

    markdown = comparison_markdown(comparison)
    assert "| 物理 | 6.00 [5.00, 7.00] (n=3, 0 failed) | 7.17 [6.00, 9.00] (n=3, 1 failed) |" in markdown
    assert "## new − base" in markdown
    assert "| 物理 | 2 | +0.75 [+0.50, +1.00] | 2 / 0 / 0 | 1 | 1 |" in markdown
    assert "| **overall** | 4 |" in markdown


def test_runs_of_different_benchmarks_are_noted(tmp_path):
    a = write(tmp_path, "a", report("a", "d1", {"c": {"1": 3.0}}))
    b = write(tmp_path, "b", report("a", "d2", {"c": {"1": 4.0}}))
    comparison = compare_runs([load_run(a), load_run(b)])
    assert [r["run"] for r in comparison["runs"]] == ["a", "a (2)"]
    assert comparison["notes"] == ["a (2) and a were run on different benchmark files (input digests d2 and d1)"]


@pytest.mark.parametrize("content, words", [
    (None, "cannot read the file"),
    ("{not json", "not valid JSON"),
    (json.dumps({"run": {"run_id": "x"}}), "not an editbench report"),
    (json.dumps(report("x", "d", {"c": {}}) | {"categories": {"c": {"results": [{"pair_id": "1", "score": "7"}]}}}),
     "results[0]"),
])
def test_an_unusable_report_is_refused_naming_the_file(tmp_path, content, words):
    path = tmp_path / "run" / "editbench_report.json"
    path.parent.mkdir()
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(InputFileError) as info:
        load_run(path.parent)
    assert str(info.value).startswith(str(path)) and words in str(info.value)


def test_compare_command_writes_json_markdown_and_chart(two_runs, tmp_path):
    base_path, new_path = two_runs
    env = {"EVALFLEET_WORK_DIR": str(tmp_path / "work"), "EVALFLEET_BROKER_URL": "redis://127.0.0.1:1/0"}
    output = tmp_path / "out" / "cmp.json"
    proc = run_producer("compare", str(base_path), str(new_path), "--output", str(output), env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(output.read_text(encoding="utf-8"))["comparisons"][0]["categories"]["物理"]["n"] == 2
    assert "## new − base" in output.with_suffix(".md").read_text(encoding="utf-8")
    assert Image.open(output.with_suffix(".png")).format == "PNG"

    printed = run_producer("compare", str(base_path), str(new_path.parent), env=env)
    assert printed.returncode == 0 and printed.stdout == output.with_suffix(".md").read_text(encoding="utf-8")

    missing = tmp_path / "nowhere" / "editbench_report.json"
    proc = run_producer("compare", str(base_path), str(missing), env=env)
    assert proc.returncode == 2 and f"{missing}: cannot read the file" in proc.stderr


VIESCORE = {"name": "viescore", "criteria": ["SC", "PQ"], "scale": [0, 10], "scoring": "expectation"}
KRIS = {"name": "kris", "criteria": ["instruction_following"], "scale": [1, 5], "scoring": "stated"}


def with_criteria(data: dict, criteria: dict[str, dict[str, float]]) -> dict:
    """``data`` whose results carry these criterion scores (pair id -> criterion -> score)."""
    for cat in data["categories"].values():
        for result in cat["results"]:
            result["criteria"] = {n: {"score": v, "source": "logits"} for n, v in criteria[result["pair_id"]].items()}
    return data


def test_runs_of_different_scales_are_refused_unless_asked_then_every_output_says_so(tmp_path):
    zero_ten = write(tmp_path, "vie", report("vie", "d1", {"物理": {"p1": 6.0}}, rubric=VIESCORE))
    one_five = write(tmp_path, "kris", report("kris", "d1", {"物理": {"p1": 4.0}, "环境": {"e1": 3.0}},
                                              rubric=KRIS))
    with pytest.raises(RubricComparisonError, match=r"vie: rubric viescore, scale 0-10.*kris: rubric kris, "
                                                    r"scale 1-5.*--allow-mixed-rubrics"):
        compare_runs([load_run(zero_ten), load_run(one_five)])
    env = {"EVALFLEET_WORK_DIR": str(tmp_path / "work"), "EVALFLEET_BROKER_URL": "redis://127.0.0.1:1/0"}
    proc = run_producer("compare", str(zero_ten), str(one_five), env=env)
    assert proc.returncode == 2 and "--allow-mixed-rubrics" in proc.stderr

    output = tmp_path / "out" / "cmp.json"
    proc = run_producer("compare", str(zero_ten), str(one_five), "--allow-mixed-rubrics", "--output", str(output),
                        env=env)
    assert proc.returncode == 0, proc.stderr
    written = json.loads(output.read_text(encoding="utf-8"))
    assert "different rubrics, scales or scorings" in written["mixed_rubrics"]
    assert written["notes"][0].startswith("WARNING:")
    assert written["differing_settings"]["rubric scale"] == {"vie": [0, 10], "kris": [1, 5]}
    assert output.with_suffix(".md").read_text(encoding="utf-8").count("WARNING") >= 2  # on top and in the notes
    comparison = compare_runs([load_run(zero_ten), load_run(one_five)], allow_rubrics=True)
    fig = comparison_figure(comparison)
    try:
        [ax] = fig.axes
        assert "WARNING" in ax.get_title()
        # 环境 exists only in the 1-5 run: the 0-10 run has no bar there, an n/a instead.
        assert len(ax.patches) == 2 + 3 and [t.get_text() for t in ax.texts] == ["n/a"]
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)


def test_the_settings_that_differ_and_per_criterion_differences_are_listed(tmp_path):
    base = with_criteria(report("base", "d1", {"物理": {"p1": 4.0, "p2": 6.0}}, rubric=VIESCORE,
                                settings={"judge_model": "Qwen/Qwen3-VL-8B", "seed": 0, "edit_steps": 28}),
                         {"p1": {"SC": 4.0, "PQ": 4.0}, "p2": {"SC": 6.0, "PQ": 6.0}})
    new = with_criteria(report("new", "d1", {"物理": {"p1": 5.0, "p2": 6.0}}, rubric=VIESCORE,
                               settings={"judge_model": "Qwen/Qwen3-VL-8B", "seed": 1, "edit_steps": 28}),
                        {"p1": {"SC": 6.0, "PQ": 4.0}, "p2": {"SC": 8.0, "PQ": 5.0}})
    comparison = compare_runs([load_run(write(tmp_path, "base", base)), load_run(write(tmp_path, "new", new))])
    assert comparison["differing_settings"] == {"seed": {"base": 0, "new": 1}}
    assert comparison["mixed_rubrics"] is None
    criteria = comparison["comparisons"][0]["criteria"]
    assert criteria["SC"]["mean_difference"] == pytest.approx(2.0) and criteria["SC"]["n"] == 2
    assert criteria["PQ"]["mean_difference"] == pytest.approx(-0.5)
    assert (criteria["PQ"]["won"], criteria["PQ"]["tied"], criteria["PQ"]["lost"]) == (0, 1, 1)
    markdown = comparison_markdown(comparison)
    assert "| SC | 2 | +2.00" in markdown and "| seed | 0 | 1 |" in markdown


def test_runs_are_found_by_name_under_the_work_directory(tmp_path):
    work = tmp_path / "work"
    write(work, "base-run", report("base-run", "d1", {"物理": {"p1": 5.0}}))
    write(work, "new-run", report("new-run", "d1", {"物理": {"p1": 7.0}}))
    comparison = compare_runs([load_run("base-run", work), load_run("new-run", work)])
    assert comparison["comparisons"][0]["overall"]["mean_difference"] == pytest.approx(2.0)
    env = {"EVALFLEET_WORK_DIR": str(work), "EVALFLEET_BROKER_URL": "redis://127.0.0.1:1/0"}
    proc = run_producer("compare", "base-run", "new-run", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "| **overall** | 1 | +2.00 |" in proc.stdout
