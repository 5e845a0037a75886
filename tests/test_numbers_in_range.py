"""Every number read from a file or a setting is finite and in its range when the run is
registered: a weight of Infinity or 1e308, a NaN, a negative seed, a timeout of 1e308 s stop
the command at its start (exit 2) with the file, the record and the field, or the setting,
named, instead of a run that is edited and scored and then cannot be reported."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from config import Settings, SettingsError, load_settings
from conftest import run_producer
from producer.editbench.comparison import load_run
from producer.editbench.sample import write_editbench_sample
from shared.editbench.rubric import RubricError, read_rubric_templates, rubric_from_templates
from shared.errors import InputFileError

SHIPPED = Settings().prompts


def rubric_with(tmp_path: Path, raw_json: str) -> Path:
    """A prompts directory whose rubric ``mine`` is ``raw_json`` (text: JSON's own literals)."""
    prompts = tmp_path / "prompts"
    shutil.copytree(SHIPPED, prompts)
    folder = prompts / "rubrics" / "mine"
    for criterion in ("a", "b"):
        (folder / criterion).mkdir(parents=True)
        (folder / criterion / "default.system.txt").write_text(f"judge {criterion}")
        (folder / criterion / "default.user.txt").write_text("{edit_instruction}")
    (folder / "rubric.json").write_text(raw_json)
    return prompts


def two_criteria(weight: str) -> str:
    return ('{"scale": {"min": 1, "max": 5}, "criteria": [{"name": "a", "weight": 1}, '
            f'{{"name": "b", "weight": {weight}}}], "overall": {{"formula": "mean"}}}}')


@pytest.mark.parametrize("weight", ["Infinity", "-Infinity", "NaN", "1e308", "1e999", "1" + "0" * 400,
                                    "-2", "0", "true", '"3"', "1001"])
def test_a_rubric_weight_out_of_range_names_the_file_and_the_field(tmp_path, weight):
    prompts = rubric_with(tmp_path, two_criteria(weight))
    with pytest.raises(RubricError) as info:
        read_rubric_templates(prompts, "mine")
    message = str(info.value)
    assert str(prompts / "rubrics" / "mine" / "rubric.json") in message
    assert "criteria[1].weight" in message and "at most 1000" in message


@pytest.mark.parametrize("scale", ['{"min": false, "max": true}', '{"min": 1, "max": Infinity}',
                                   '{"min": NaN, "max": 5}', '{"min": 1, "max": 5.5}'])
def test_a_rubric_scale_that_is_not_two_integers_is_refused(tmp_path, scale):
    prompts = rubric_with(tmp_path, f'{{"scale": {scale}, "criteria": [{{"name": "a"}}]}}')
    with pytest.raises(RubricError, match=r"rubric\.json: scale must be"):
        read_rubric_templates(prompts, "mine")


def test_weights_at_the_top_of_their_range_give_a_finite_overall(tmp_path):
    prompts = rubric_with(tmp_path, two_criteria("1000"))
    rubric = rubric_from_templates("mine", read_rubric_templates(prompts, "mine"))
    assert rubric.overall({"a": 1, "b": 5}) == pytest.approx((1 + 5000) / 1001)


def test_run_with_an_infinite_weight_exits_2_before_anything_starts(tmp_path):
    prompts = rubric_with(tmp_path, two_criteria("1e308"))
    benchmark = write_editbench_sample(tmp_path / "bench")
    work = tmp_path / "work"
    proc = run_producer("run", "editbench", "--benchmark", str(benchmark),
                        env={"EVALFLEET_WORK_DIR": str(work), "EVALFLEET_PROMPTS_DIR": str(prompts),
                             "EVALFLEET_JUDGE_RUBRIC": "mine"}, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "rubric.json: criteria[1].weight: a positive number at most 1000, not 1e+308" in proc.stderr
    assert not (work / "redis").exists() and not (work / "artifacts").exists()  # nothing started


@pytest.mark.parametrize("variable, value", [
    ("SEED", "-1"), ("SEED", str(2**64)), ("TASK_TIME_LIMIT", "1" + "0" * 30),
    ("JUDGE_ENDPOINT_TIMEOUT_SECONDS", "1e308"), ("POLL_INTERVAL_SECONDS", "1e300"),
    ("EDIT_GUIDANCE", "1e308"), ("MAX_NEW_TOKENS", str(2**63)), ("VISIBILITY_TIMEOUT", "1e6000"),
    ("EDITOR_LORAS", "style.safetensors:1e308"), ("EDITOR_LORAS", "style.safetensors:-inf"),
])
def test_a_number_setting_out_of_range_is_refused_naming_it(variable, value):
    with pytest.raises(SettingsError, match=f"EVALFLEET_{variable}"):
        load_settings({f"EVALFLEET_{variable}": value})


def test_a_flag_is_held_to_its_setting_s_range(tmp_path):
    proc = run_producer("run", "relations", "--top-k", str(10**30),
                        env={"EVALFLEET_WORK_DIR": str(tmp_path / "work")}, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "TOP_K" in proc.stderr and "out of range" in proc.stderr


@pytest.mark.parametrize("score", ["1e308", "-1", "11", "Infinity"])
def test_compare_refuses_a_report_score_off_the_scales(tmp_path, score):
    report = tmp_path / "report.json"
    report.write_text('{"run": {"run_id": "r"}, "categories": {"c": {"results": '
                      f'[{{"pair_id": "p", "score": {score}}}]}}}}}}')
    with pytest.raises(InputFileError, match=r"results\[0\].*from 0 to 10"):
        load_run(report)
