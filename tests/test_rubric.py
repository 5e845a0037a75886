"""Rubrics (criteria, scale, overall formula), the documented answer format, and the tiny judge
scoring several criteria, other scales and stated answers."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from config import Settings
from shared.editbench.judge_scores import (JudgeFailure, JudgeScore, find_stated_score, scale_probabilities,
                                          stated_score)
from shared.editbench.prompt_manager import read_templates
from shared.editbench.rubric import (RubricError, criterion_prompts, read_rubric_templates, rubric_from_templates)
from workers.judging.judge import Judge, JudgeImage, JudgeItem

SHIPPED = Settings().prompts


def _rubric(name: str, prompts: Path = SHIPPED):
    templates = read_rubric_templates(prompts, name)
    return rubric_from_templates(name, templates), templates


def test_the_default_rubric_is_todays_single_score_with_todays_files() -> None:
    rubric, templates = _rubric("default")
    assert rubric.names == ("score",) and rubric.values == tuple(range(11))
    # The same files under the same names: a default run's prompts digest is what it was.
    assert templates == read_templates(SHIPPED)
    assert rubric.overall({"score": 6.5}) == 6.5


def test_shipped_rubrics_have_their_criteria_scales_and_prompts() -> None:
    viescore, templates = _rubric("viescore")
    assert viescore.names == ("SC", "PQ") and viescore.values == tuple(range(11))
    prompts = criterion_prompts(viescore, SHIPPED, templates)
    sc = prompts["SC"].get_full_prompt("物理", "一个球", "让球滚落")
    pq = prompts["PQ"].get_full_prompt("物理", "一个球", "让球滚落")
    assert "SEMANTIC CONSISTENCY" in sc["system_prompt"] and "PERCEPTUAL QUALITY" in pq["system_prompt"]
    assert "让球滚落" in sc["user_prompt"]

    kris, _ = _rubric("kris")
    assert kris.names == ("instruction_following", "detail_preservation", "visual_quality",
                          "knowledge_plausibility")
    assert kris.values == (1, 2, 3, 4, 5)
    # KRIS scores knowledge plausibility in its knowledge categories only.
    assert "knowledge_plausibility" not in [c.name for c in kris.criteria_for("color_change")]
    assert "knowledge_plausibility" in [c.name for c in kris.criteria_for("chemistry")]


def test_each_benchmark_has_its_protocol_rubric() -> None:
    gedit, templates = _rubric("gedit")
    assert (gedit.values, gedit.scoring, gedit.formula) == (tuple(range(11)), "stated", "viescore")
    assert gedit.overall({"edit_success": 9, "overediting": 4, "naturalness": 9, "artifacts": 10}) == 6.0
    assert gedit.report.average == "macro" and gedit.report.split_by == ("instruction_language",)
    assert dict(gedit.report.subsets) == {"intersection": {"Intersection_exist": True}}
    prompts = criterion_prompts(gedit, SHIPPED, templates)
    assert "OVER-EDITING" in prompts["overediting"].get_full_prompt("x", "a ball", "move it")["system_prompt"]

    imgedit, _ = _rubric("imgedit")
    assert imgedit.names == ("instruction_adherence", "editing_quality", "detail_preservation")
    assert imgedit.overall({"instruction_adherence": 5, "editing_quality": 4, "detail_preservation": 3}) == 4
    assert imgedit.report.average == "macro"

    rise, _ = _rubric("rise")
    assert rise.overall({"consistency": 5, "reasoning": 3}, "logical_reasoning") == pytest.approx(1.5 + 2.1)
    assert rise.overall({"consistency": 5, "reasoning": 1, "plausibility": 5}, "causal_reasoning") == \
        pytest.approx((1.5 + 0.5 + 1.0) / 2)
    assert rise.report.rows_by == ("category", "subtask") and dict(rise.report.shares) == {
        "accuracy": "all_criteria_at_max"}


def test_overall_formulas() -> None:
    viescore, _ = _rubric("viescore")
    assert viescore.overall({"SC": 4.0, "PQ": 9.0}) == pytest.approx(6.0)
    kris, _ = _rubric("kris")
    assert kris.overall({"instruction_following": 5, "detail_preservation": 4, "visual_quality": 3,
                         "knowledge_plausibility": 2}) == pytest.approx(3.5)


def _own_rubric(tmp_path: Path, definition: dict) -> Path:
    prompts = tmp_path / "prompts"
    shutil.copytree(SHIPPED, prompts)
    folder = prompts / "rubrics" / "mine"
    for criterion in ("a", "b", "c"):
        (folder / criterion).mkdir(parents=True)
        (folder / criterion / "default.system.txt").write_text(f"judge {criterion}")
        (folder / criterion / "default.user.txt").write_text("{edit_instruction}")
    (folder / "rubric.json").write_text(json.dumps(definition))
    return prompts


def test_weighted_mean_and_min_and_viescore_groups(tmp_path: Path) -> None:
    criteria = [{"name": "a", "weight": 3}, {"name": "b"}, {"name": "c"}]
    prompts = _own_rubric(tmp_path, {"scale": {"min": 0, "max": 10}, "criteria": criteria})
    mean, _ = _rubric("mine", prompts)
    assert mean.overall({"a": 10, "b": 0, "c": 5}) == pytest.approx((30 + 0 + 5) / 5)
    (prompts / "rubrics/mine/rubric.json").write_text(json.dumps(
        {"scale": {"min": 0, "max": 10}, "criteria": criteria, "overall": {"formula": "min"}}))
    assert _rubric("mine", prompts)[0].overall({"a": 10, "b": 2, "c": 5}) == 2
    (prompts / "rubrics/mine/rubric.json").write_text(json.dumps(
        {"scale": {"min": 0, "max": 10}, "criteria": criteria,
         "overall": {"formula": "viescore", "sc": ["a", "b"], "pq": ["c"]}}))
    assert _rubric("mine", prompts)[0].overall({"a": 8, "b": 2, "c": 8}) == pytest.approx(4.0)


@pytest.mark.parametrize("definition, message", [
    ({"scale": {"min": 0, "max": 11}, "criteria": [{"name": "a"}]}, "scale"),
    ({"scale": {"min": 1, "max": 5}, "criteria": []}, "criteria"),
    ({"scale": {"min": 1, "max": 5}, "criteria": [{"name": "a", "prompts": "../.."}]}, r"criteria\[0\]\.prompts"),
    ({"scale": {"min": 1, "max": 5}, "criteria": [{"name": "a", "weight": 0}]}, r"criteria\[0\]\.weight"),
    ({"scale": {"min": 1, "max": 5}, "criteria": [{"name": "a"}], "overall": {"formula": "median"}}, "formula"),
    ({"scale": {"min": 1, "max": 5}, "criteria": [{"name": "a"}],
      "overall": {"formula": "viescore", "sc": ["a"], "pq": ["z"]}}, r"overall\.pq"),
])
def test_a_bad_rubric_names_the_file_and_field(tmp_path: Path, definition: dict, message: str) -> None:
    prompts = _own_rubric(tmp_path, definition)
    with pytest.raises(RubricError, match=rf"rubrics/mine/rubric\.json.*{message}"):
        _rubric("mine", prompts)


def test_an_unknown_rubric_lists_the_known_ones() -> None:
    with pytest.raises(RubricError, match="no rubric 'nope'.*default, gedit, imgedit, kris, rise, viescore"):
        read_rubric_templates(SHIPPED, "nope")
    with pytest.raises(RubricError, match="letters, digits"):
        read_rubric_templates(SHIPPED, "../prompts")


# --- the documented answer format -----------------------------------------------------------

@pytest.mark.parametrize("answer, value", [
    ("7", 7), (" 10\n", 10),
    ("The edit is complete and the ball falls.\nScore: 7", 7),
    ("Reasoning...\n**Score:** 9\n", 9),
    ("score: 3\nOn reflection:\nScore: 4", 4),  # the last stated score wins
    ('{"reasoning": "fine, though blurry", "score": 6}', 6),
    ('Here you go: {"score": 10, "note": "{braces}"}', 10),
])
def test_stated_scores_are_read(answer: str, value: int) -> None:
    stated = find_stated_score(answer, range(11))
    assert stated is not None and stated.value == value
    assert answer[stated.start:].startswith(str(value))


@pytest.mark.parametrize("answer", ["", "I think it is good.", "Score: 11", "Score: seven",
                                    '{"score": "7"}', "7/10 overall", "Score: 0"])
def test_answers_without_a_readable_score_on_the_scale_are_none(answer: str) -> None:
    # "Score: 0" on a 1-5 scale is outside it; everything here is unreadable: never a guess.
    assert find_stated_score(answer, range(1, 6)) is None


def test_scale_probabilities_split_one_and_ten() -> None:
    first = {str(d): 0.1 for d in range(10)}
    p = scale_probabilities(first, 0.25, range(11))
    assert p["1"] == pytest.approx(0.075) and p["10"] == pytest.approx(0.025)
    assert sum(p.values()) == pytest.approx(1)
    five = scale_probabilities({"0": 0.5, "1": 0.1, "5": 0.1}, None, range(1, 6))
    assert five == pytest.approx({"1": 0.5, "2": 0, "3": 0, "4": 0, "5": 0.5})


# --- the tiny judge ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kris_rows() -> list[JudgeItem]:
    """The four criteria rows of one pair, as the score task builds them."""
    rubric, templates = _rubric("kris")
    original = Image.new("RGB", (96, 96), "beige")
    edited = original.copy()
    ImageDraw.Draw(edited).ellipse((10, 10, 80, 80), fill="red")
    return [JudgeItem.of_pair(original, edited,
                              **manager.get_full_prompt("物理", "一张桌子", "在桌上放一个红球"))
            for manager in criterion_prompts(rubric, SHIPPED, templates).values()]


def test_a_1_to_5_scale_is_the_expectation_over_its_digits(vlm, kris_rows) -> None:
    scores = Judge(*vlm, batch_size=4, values=(1, 2, 3, 4, 5)).score(kris_rows)
    for score in scores:
        assert list(score.probabilities) == ["1", "2", "3", "4", "5"]
        assert sum(score.probabilities.values()) == pytest.approx(1, abs=1e-6)
        assert score.score == pytest.approx(sum(int(v) * p for v, p in score.probabilities.items()))
        assert 1 <= score.score <= 5 and score.source == "logits"
    # Each criterion has its own prompt, so its own score; one forward equals one row at a time.
    assert len({round(s.score, 6) for s in scores}) == 4
    alone = [Judge(*vlm, batch_size=1, values=(1, 2, 3, 4, 5)).score([row])[0] for row in kris_rows]
    assert [a.score for a in alone] == pytest.approx([s.score for s in scores], abs=1e-4)


def test_the_criteria_of_a_pair_encode_its_two_images_once(vlm, kris_rows) -> None:
    encoded: list[int] = []
    hook = vlm[1].model.visual.register_forward_hook(
        lambda module, args, kwargs, output: encoded.append(len(kwargs["grid_thw"])),
        with_kwargs=True)
    try:
        shared = Judge(*vlm, batch_size=4, values=(1, 2, 3, 4, 5)).score(kris_rows)
    finally:
        hook.remove()
    assert encoded == [2]  # one pass over the pair's two images, not 4 x 2
    # The same scores as rows that each encode their own copies of the images.
    copies = [JudgeItem([JudgeImage(shown.label, shown.image.copy()) for shown in row.images],
                        system_prompt=row.system_prompt, user_prompt=row.user_prompt)
              for row in kris_rows]
    apart = Judge(*vlm, batch_size=4, values=(1, 2, 3, 4, 5)).score(copies)
    assert [s.score for s in shared] == pytest.approx([s.score for s in apart], abs=1e-5)


def test_reasoning_mode_fails_an_answer_without_a_score_with_its_text(vlm, kris_rows) -> None:
    # The tiny random model writes no "Score: N": every row fails, its answer attached, none scored.
    results = Judge(*vlm, batch_size=2, values=(1, 2, 3, 4, 5), reasoning_tokens=6).score(kris_rows[:2])
    assert all(isinstance(r, JudgeFailure) for r in results)
    assert all("states no score from 1 to 5" in r.reason and "answer: '" in r.reason for r in results)


def test_a_stated_score_is_read_with_the_probabilities_at_its_position(vlm, kris_rows) -> None:
    judge = Judge(*vlm, batch_size=2, values=tuple(range(11)))
    answers = ["The ball is there, but its shadow is missing.\nScore: 7", "Nothing changed."]
    read, failed = judge.score_answers(kris_rows[:2], answers)
    assert isinstance(read, JudgeScore) and read.rationale == answers[0]
    assert sum(read.probabilities.values()) == pytest.approx(1, abs=1e-6)
    assert 0 <= read.score <= 10
    # The distribution at the stated position, not the first answer token's.
    [first_token] = judge.score(kris_rows[:1])
    assert not math.isclose(read.score, first_token.score, abs_tol=1e-6)
    assert isinstance(failed, JudgeFailure) and "Nothing changed." in failed.reason


# --- protocols as data: criteria and weights per category, penalties, stated scores ------------

def test_criteria_and_weights_can_differ_per_category(tmp_path: Path) -> None:
    # RISEBench's shape: 0.3 / 0.5 / 0.2, logical 0.3 / 0.7 without plausibility, halved at reasoning 1.
    prompts = _own_rubric(tmp_path, {
        "scale": {"min": 1, "max": 5}, "scoring": "stated",
        "criteria": [{"name": "a", "weight": 0.3},
                     {"name": "b", "weight": {"*": 0.5, "logical": 0.7}},
                     {"name": "c", "weight": 0.2, "categories": ["temporal", "causal"]}],
        "overall": {"formula": "mean", "penalty": {"criterion": "b", "at": 1, "factor": 0.5}}})
    rubric, _ = _rubric("mine", prompts)
    assert rubric.scoring == "stated"
    assert [c.name for c in rubric.criteria_for("logical")] == ["a", "b"]
    assert [c.name for c in rubric.criteria_for("temporal")] == ["a", "b", "c"]
    assert rubric.overall({"a": 5, "b": 4, "c": 3}, "temporal") == pytest.approx(0.3 * 5 + 0.5 * 4 + 0.2 * 3)
    assert rubric.overall({"a": 5, "b": 4}, "logical") == pytest.approx(0.3 * 5 + 0.7 * 4)
    # Reasoning at 1 halves the score, never below the scale's minimum.
    assert rubric.overall({"a": 5, "b": 1, "c": 5}, "causal") == pytest.approx((1.5 + 0.5 + 1.0) / 2)
    assert rubric.overall({"a": 1, "b": 1}, "logical") == 1.0
    described = rubric.describe()
    assert described["weights"]["b"] == {"*": 0.5, "logical": 0.7}
    assert described["only_in"] == {"c": ["temporal", "causal"]}
    assert described["scoring"] == "stated" and described["penalty"] == {"criterion": "b", "at": 1, "factor": 0.5}


@pytest.mark.parametrize("extra, message", [
    ({"scoring": "mode"}, "scoring"),
    ({"overall": {"formula": "mean", "penalty": {"criterion": "z", "at": 1, "factor": 0.5}}}, r"overall\.penalty"),
    ({"report": {"average": "median"}}, r"report\.average"),
    ({"report": {"split_by": "language"}}, r"report\.split_by"),
    ({"report": {"shares": {"accuracy": "most"}}}, r"report\.shares"),
    ({"criteria": [{"name": "a", "weight": {"*": 1, "x": -1}}]}, r"criteria\[0\]\.weight"),
    ({"criteria": [{"name": "a", "categories": []}]}, r"criteria\[0\]\.categories"),
    ({"criteria": [{"name": "a", "categories": ["x"]}, {"name": "b"}],
      "overall": {"formula": "viescore", "sc": ["a"], "pq": ["b"]}}, "every category"),
    ({"criteria": [{"name": "a", "images": ["edited", "reference"]}]}, r"criteria\[0\]\.images"),
    ({"criteria": [{"name": "a", "images": [{"field": "gt_img", "label": "GT"}]}]}, r"criteria\[0\]\.images"),
    ({"criteria": [{"name": "a", "images": ["edited", "edited"]}]}, r"criteria\[0\]\.images"),
    ({"fields": {"optional": "reference"}}, "fields"),
])
def test_a_bad_protocol_field_names_the_file_and_field(tmp_path: Path, extra: dict, message: str) -> None:
    prompts = _own_rubric(tmp_path, {"scale": {"min": 1, "max": 5}, "criteria": [{"name": "a"}], **extra})
    with pytest.raises(RubricError, match=rf"rubrics/mine/rubric\.json.*{message}"):
        _rubric("mine", prompts)


def test_a_stated_score_is_the_integer_and_an_answer_without_one_is_a_listed_failure() -> None:
    read = stated_score("The ball is there.\nScore: 4", range(1, 6), rationale="why")
    assert isinstance(read, JudgeScore) and (read.score, read.source, read.rationale) == (4.0, "answer", "why")
    assert read.probabilities == {"1": 0, "2": 0, "3": 0, "4": 1, "5": 0}
    failed = stated_score("Somewhere between 3 and 4.", range(1, 6))
    assert isinstance(failed, JudgeFailure) and "Somewhere between 3 and 4." in failed.reason


def test_stated_scoring_on_the_tiny_judge_reads_its_answer_never_guesses(vlm, kris_rows) -> None:
    # The tiny random model's greedy answer states no integer: each row fails with that answer;
    # the same rows scored by expectation all get a score.
    stated = Judge(*vlm, batch_size=4, values=(1, 2, 3, 4, 5), stated=True).score(kris_rows)
    assert all(isinstance(r, JudgeFailure) and "answer: '" in r.reason for r in stated)
    expected = Judge(*vlm, batch_size=4, values=(1, 2, 3, 4, 5)).score(kris_rows)
    assert all(isinstance(r, JudgeScore) and r.source == "logits" for r in expected)
