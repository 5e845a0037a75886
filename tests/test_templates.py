"""Judge templates take plain placeholders only: a template cannot reach the attributes, items,
conversions or format specs of the values (``{original_description.__class__.__mro__}`` would
put Python internals in the judge's prompt), whichever template it is, read from the prompts
directory, from a rubric's criterion folder, or stored with a run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from config import Settings, SettingsError
from producer.editbench.register import register_editbench, run_templates
from producer.editbench.sample import write_editbench_sample
from producer.embedded import EmbeddedRedis
from shared.store import connect
from shared.editbench.prompt_manager import PromptManager, PromptTemplateError, read_templates

SHIPPED = Settings().prompts

REFUSED = ["{edit_instruction.__init__.__globals__}", "{original_description[0]}",
           "{original_description!a}", "{edit_instruction:{original_description}}",
           "{edit_instruction:^200}", "{edit_instruction!s:>5}", "{1}", "{}", "{ edit_instruction}",
           "{edit_instruction.upper}", "{instruction-language}"]


def _prompts(tmp_path: Path) -> Path:
    prompts = tmp_path / "prompts"
    shutil.copytree(SHIPPED, prompts)
    return prompts


@pytest.mark.parametrize("placeholder", REFUSED)
def test_a_placeholder_that_is_not_a_plain_name_is_refused_naming_file_and_placeholder(tmp_path, placeholder):
    prompts = _prompts(tmp_path)
    template = prompts / "设计.user.txt"  # a category's override
    template.write_text(f"Instruction: {placeholder}\n")
    with pytest.raises(PromptTemplateError) as info:
        read_templates(prompts)
    assert str(template) in str(info.value) and repr(placeholder) in str(info.value)


@pytest.mark.parametrize("placeholder", REFUSED[:4])
def test_a_rubric_criterion_template_is_checked_the_same_way(tmp_path, placeholder):
    prompts = _prompts(tmp_path)
    template = prompts / "rubrics" / "kris" / "visual_quality" / "default.system.txt"
    template.write_text(f"Judge {placeholder}")
    with pytest.raises(SettingsError, match="plain names only") as info:
        run_templates(Settings(prompts_dir=str(prompts), judge_rubric="kris"))
    assert str(template) in str(info.value)


def test_templates_stored_with_a_run_are_checked_when_used(tmp_path):
    stored = {"default.system.txt": "ok", "default.user.txt": "{edit_instruction.__class__}"}
    with pytest.raises(PromptTemplateError, match="default.user.txt: placeholder"):
        PromptManager(tmp_path, stored)


def test_plain_placeholders_and_literal_braces_still_fill_in(tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "default.system.txt").write_text('Answer as {{"score": n}}.')
    (prompts / "default.user.txt").write_text("{original_description} -> {edit_instruction}")
    full = PromptManager(prompts, read_templates(prompts)).get_full_prompt("c", "a {x} cat", "{0}")
    assert full == {"system_prompt": 'Answer as {"score": n}.', "user_prompt": "a {x} cat -> {0}"}


def test_a_line_naming_a_value_the_pair_lacks_is_left_out_and_fields_fill_in(tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "default.system.txt").write_text("Judge {category} pair {pair_id}.")
    (prompts / "default.user.txt").write_text("Original description: {original_description}\n"
                                             "Instruction: {edit_instruction}\nReference: {reference}\n"
                                             "Flags: {Intersection_exist} {frames}")
    manager = PromptManager(prompts, read_templates(prompts))
    full = manager.get_full_prompt("causal", None, "melt it",
                                   {"pair_id": "causal_1", "reference": "a puddle",
                                    "Intersection_exist": True, "frames": ["1.png", "2.png"]})
    assert full["system_prompt"] == "Judge causal pair causal_1."
    assert full["user_prompt"] == 'Instruction: melt it\nReference: a puddle\nFlags: true ["1.png", "2.png"]'
    lacking = manager.get_full_prompt("causal", "a cube of ice", "melt it", {"pair_id": "causal_2"})
    assert lacking["user_prompt"] == "Original description: a cube of ice\nInstruction: melt it"


def test_a_placeholder_no_record_has_is_refused_at_registration_naming_template_and_fields(tmp_path):
    prompts = _prompts(tmp_path)
    (prompts / "default.user.txt").write_text("Instruction: {edit_instruction}\nReference: {reference}")
    benchmark = write_editbench_sample(tmp_path / "bench", "json-lines")
    with EmbeddedRedis(tmp_path / "redis") as server:
        settings = Settings(broker_url=server.url, work_dir=tmp_path / "work", prompts_dir=str(prompts))
        with pytest.raises(SettingsError) as info:
            register_editbench(settings, connect(server.url), benchmark, "eb")
        assert not connect(server.url).keys("*")  # nothing registered
    message = str(info.value)
    assert "judge template default.user.txt: placeholder {reference}" in message
    assert "the records category, edit_instruction, original_description, pair_id" in message
