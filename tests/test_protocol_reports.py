"""The protocols' tables in the editbench report: grouped by category and record fields, with
macro and micro averages and shares, checked against numbers computed by hand; a category
without a score is n/a in the JSON, the Markdown and the chart, never 0."""

from __future__ import annotations

import math
import uuid

import pytest

from config import Settings
from producer.editbench.register import run_settings, run_templates
from producer.editbench.report import chart_figure, editbench_report, write_editbench_report
from shared.editbench.rubric import rubric_from_templates
from shared.keys import KEY_SEP
from shared.messages import EDIT_STAGE, SCORE_STAGE
from shared.store import RunStore

GEDIT_CRITERIA = ("edit_success", "overediting", "naturalness", "artifacts")


def filled_store(client, rubric_name: str, pairs: list[tuple], tmp_path) -> RunStore:
    """A registered run of ``rubric_name`` whose pairs are done as given: each
    (category, pair id, record fields, {criterion: score} or None for a pair whose scoring failed)."""
    settings = Settings(judge_rubric=rubric_name)
    templates = run_templates(settings)
    run = run_settings(settings, templates)
    rubric = rubric_from_templates(rubric_name, templates)
    store = RunStore(client, f"protocol-{rubric_name}-{uuid.uuid4().hex[:8]}")
    categories = list(dict.fromkeys(p[0] for p in pairs))
    store.register({"job": "editbench", "run_id": store.run_id, "categories": categories, **run.record()})
    for order, (category, pair_id, fields, scores) in enumerate(pairs):
        key = f"{category}{KEY_SEP}{pair_id}"
        edited = str(tmp_path / f"{order}.png")
        item = {"category": category, "pair_id": pair_id, "order": order, "fields": fields,
                "edit_instruction": "edit", "original_path": str(tmp_path / "o.png"), "edited_path": edited}
        store.add_items(EDIT_STAGE, {key: item})
        store.add_items(SCORE_STAGE, {key: item})
        store.mark_done(EDIT_STAGE, key, {"edited_path": edited})
        if scores is None:
            store.mark_failed(SCORE_STAGE, key, "criterion edit_success: the judge's answer states no score")
        else:
            store.mark_done(SCORE_STAGE, key, {
                "score": rubric.overall(scores, category),
                "criteria": {n: {"score": s, "probabilities": {}, "source": "answer"} for n, s in scores.items()}})
    return store


def gedit(success: int, over: int, natural: int, artifacts: int) -> dict[str, int]:
    return dict(zip(GEDIT_CRITERIA, (success, over, natural, artifacts)))


@pytest.fixture
def gedit_run(redis_client, tmp_path) -> RunStore:
    en, cn = "en", "cn"
    return filled_store(redis_client, "gedit", [
        # GEdit's pair identity is its key and language. SC x PQ in the comments.
        ("background_change", "en/1", {"instruction_language": en, "Intersection_exist": True}, gedit(8, 6, 9, 4)),    # 6 x 4
        ("background_change", "en/2", {"instruction_language": en, "Intersection_exist": False}, gedit(10, 10, 9, 9)),  # 10 x 9
        ("background_change", "cn/1", {"instruction_language": cn, "Intersection_exist": True}, gedit(4, 9, 1, 9)),    # 4 x 1
        ("color_alter", "en/1", {"instruction_language": en, "Intersection_exist": True}, gedit(9, 9, 4, 4)),          # 9 x 4
        ("color_alter", "cn/1", {"instruction_language": cn, "Intersection_exist": False}, None),
        ("style_change", "en/1", {"instruction_language": en, "Intersection_exist": True}, None),
        ("style_change", "cn/1", {"instruction_language": cn, "Intersection_exist": True}, None),
    ], tmp_path)


def test_gedit_tables_by_task_type_language_and_intersection(gedit_run) -> None:
    report = editbench_report(gedit_run)
    protocol = report["protocol"]
    assert protocol["scoring"] == "stated" and protocol["average"] == "macro"
    assert [c["name"] for c in protocol["columns"]] == ["en", "en / intersection", "cn", "cn / intersection"]
    rows = protocol["tables"]["category"]["rows"]
    o1, o2, o3, o4 = math.sqrt(24), math.sqrt(90), 2.0, 6.0
    background = rows["background_change"]["en"]
    assert (background["pairs"], background["scored"], background["failed"]) == (2, 2, 0)
    assert background["mean"] == pytest.approx((o1 + o2) / 2)
    assert background["parts"] == pytest.approx({"SC": (6 + 10) / 2, "PQ": (4 + 9) / 2})
    assert background["criteria"]["edit_success"] == pytest.approx(9.0)
    assert rows["background_change"]["en / intersection"]["mean"] == pytest.approx(o1)
    assert rows["background_change"]["cn"]["mean"] == pytest.approx(o3)
    # A type whose pairs all failed has no mean: n/a, not 0, and is left out of the macro average.
    assert rows["style_change"]["en"] == {**rows["style_change"]["en"], "pairs": 1, "scored": 0, "failed": 1,
                                          "mean": None}
    assert rows["color_alter"]["cn / intersection"]["pairs"] == 0

    macro, micro = protocol["tables"]["category"]["macro"], protocol["tables"]["category"]["micro"]
    assert macro["en"]["mean"] == pytest.approx(((o1 + o2) / 2 + o4) / 2)
    assert (macro["en"]["rows"], macro["en"]["rows_without_score"]) == (2, 1)
    assert micro["en"]["mean"] == pytest.approx((o1 + o2 + o4) / 3)
    assert (micro["en"]["pairs"], micro["en"]["failed"]) == (4, 1)
    assert macro["en / intersection"]["mean"] == pytest.approx((o1 + o4) / 2)
    assert macro["cn"]["mean"] == pytest.approx(o3) and micro["cn"]["failed"] == 2
    assert macro["en"]["parts"]["SC"] == pytest.approx(((6 + 10) / 2 + 9) / 2)
    assert protocol["headline"] == pytest.approx({"en": macro["en"]["mean"], "en / intersection": (o1 + o4) / 2,
                                                  "cn": o3, "cn / intersection": o3})
    # Each pair keeps its benchmark fields.
    [first, _] = report["categories"]["background_change"]["results"][:2]
    assert first["fields"] == {"instruction_language": "en", "Intersection_exist": True}


def test_the_markdown_and_the_chart_show_a_category_without_a_score_as_n_a(gedit_run, tmp_path) -> None:
    output = tmp_path / "report.json"
    report = write_editbench_report(gedit_run, output)
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert report["markdown"] == str(tmp_path / "report.md") and (tmp_path / "report.png").stat().st_size > 0
    assert "## en, by category" in markdown and "## cn / intersection, by category" in markdown
    assert "| style_change | 1 | 0 | 1 | n/a | n/a | n/a | n/a | n/a | n/a | n/a |" in markdown
    assert f"| background_change | 2 | 2 | 0 | 9.000 | 8.000 | 9.000 | 6.500 | 8.000 | 6.500 | " \
           f"{(math.sqrt(24) + math.sqrt(90)) / 2:.3f} |" in markdown
    assert "| **macro** (2 rows with a score) |" in markdown

    fig = chart_figure(report)
    try:
        [ax] = fig.axes
        # Four columns x three types: bars only where a mean exists (en: 2, en/int: 2, cn: 1, cn/int: 1).
        assert len(ax.patches) == 6
        assert sum(text.get_text() == "n/a" for text in ax.texts) == 12 - 6
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)


def test_rise_weights_penalty_subtasks_and_accuracy(redis_client, tmp_path) -> None:
    full = {"consistency": 5, "reasoning": 5, "plausibility": 5}
    store = filled_store(redis_client, "rise", [
        ("temporal_reasoning", "1", {"subtask": "Life Progression"}, full),                                  # 5
        ("temporal_reasoning", "2", {"subtask": "Life Progression"},
         {"consistency": 4, "reasoning": 1, "plausibility": 5}),                                              # halved
        ("logical_reasoning", "3", {"subtask": "Puzzle Solving"}, {"consistency": 5, "reasoning": 5}),       # 5
        ("logical_reasoning", "4", {"subtask": "Puzzle Solving"}, {"consistency": 3, "reasoning": 4}),
    ], tmp_path)
    report = editbench_report(store)
    halved = (0.3 * 4 + 0.5 * 1 + 0.2 * 5) / 2
    logical = 0.3 * 3 + 0.7 * 4
    tables = report["protocol"]["tables"]
    assert tables["category"]["rows"]["temporal_reasoning"]["all"]["mean"] == pytest.approx((5 + halved) / 2)
    assert tables["category"]["rows"]["logical_reasoning"]["all"]["mean"] == pytest.approx((5 + logical) / 2)
    # Accuracy: every criterion the pair was scored on at 5 (logical has no plausibility).
    assert tables["category"]["rows"]["temporal_reasoning"]["all"]["shares"] == {"accuracy": 0.5}
    assert tables["category"]["micro"]["all"]["shares"] == {"accuracy": 0.5}
    assert tables["subtask"]["rows"]["Puzzle Solving"]["all"]["mean"] == pytest.approx((5 + logical) / 2)
    assert report["protocol"]["headline"]["all"] == pytest.approx((5 + halved + 5 + logical) / 4)  # micro
    # Plausibility is not asked in the logical category: no failure counted for it there.
    assert report["criteria"]["plausibility"] == {**report["criteria"]["plausibility"], "n": 2, "failed": 0}
    assert tables["category"]["rows"]["logical_reasoning"]["all"]["criteria"]["plausibility"] is None


def test_a_run_without_record_fields_has_one_column_and_its_micro_mean(redis_client, tmp_path) -> None:
    store = filled_store(redis_client, "imgedit", [
        ("add", "1", {}, {"instruction_adherence": 5, "editing_quality": 4, "detail_preservation": 3}),
        ("add", "2", {}, {"instruction_adherence": 1, "editing_quality": 1, "detail_preservation": 1}),
        ("remove", "3", {}, {"instruction_adherence": 2, "editing_quality": 2, "detail_preservation": 5}),
    ], tmp_path)
    protocol = editbench_report(store)["protocol"]
    assert [c["name"] for c in protocol["columns"]] == ["all"]
    table = protocol["tables"]["category"]
    assert table["rows"]["add"]["all"]["mean"] == pytest.approx((4 + 1) / 2)
    assert table["macro"]["all"]["mean"] == pytest.approx((2.5 + 3) / 2) == protocol["headline"]["all"]
    assert table["micro"]["all"]["mean"] == pytest.approx((4 + 1 + 3) / 3)
