"""The judge's prompts (per-category templates) and its probability-based 0-10 score, on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from config import Settings
from shared.editbench.prompt_manager import PromptManager
from workers.judging.judge import Judge, JudgeItem, JudgeScore

CPU = torch.device("cpu")
SHIPPED_PROMPTS = Settings().prompts


# --- prompts -------------------------------------------------------------------------


@pytest.fixture
def prompts_dir(tmp_path: Path) -> Path:
    """A small prompts directory inside ``tmp_path``, next to a decoy file outside it."""
    directory = tmp_path / "prompts"
    directory.mkdir()
    (directory / "default.system.txt").write_text("DEFAULT SYSTEM\n", encoding="utf-8")
    (directory / "default.user.txt").write_text(
        "D: {original_description} | I: {edit_instruction} | {{literal}}\n", encoding="utf-8"
    )
    (directory / "物理.system.txt").write_text("PHYSICS SYSTEM\n", encoding="utf-8")
    (tmp_path / "x.system.txt").write_text("OUTSIDE THE PROMPTS DIR", encoding="utf-8")
    return directory


def test_shipped_prompts_override_the_system_prompt_per_category() -> None:
    manager = PromptManager(SHIPPED_PROMPTS)
    physics = manager.get_full_prompt("物理", "一个红色的球放在桌子上", "让球从桌子边缘滚落")
    unknown = manager.get_full_prompt("杂项", "一个红色的球放在桌子上", "让球从桌子边缘滚落")

    default_system = (SHIPPED_PROMPTS / "default.system.txt").read_text(encoding="utf-8").strip()
    physics_system = (SHIPPED_PROMPTS / "物理.system.txt").read_text(encoding="utf-8").strip()
    assert physics["system_prompt"] == physics_system != default_system
    assert unknown["system_prompt"] == default_system
    # No category overrides the user prompt, so both use the default one.
    assert physics["user_prompt"] == unknown["user_prompt"]
    assert "让球从桌子边缘滚落" in physics["user_prompt"]


@pytest.mark.parametrize("category", ["物理", "环境", "社会", "因果", "指代"])
def test_every_reference_category_has_its_own_system_prompt(category: str) -> None:
    manager = PromptManager(SHIPPED_PROMPTS)
    system = manager.get_full_prompt(category, "d", "i")["system_prompt"]
    assert system != manager.get_full_prompt("杂项", "d", "i")["system_prompt"]
    assert category in system and "0 to 10" in system


def test_placeholders_are_filled_verbatim(prompts_dir: Path) -> None:
    description = "桌上有一个 {red} 球 }{ and {{braces}}"
    instruction = "把 {0} 球变成绿色"
    prompt = PromptManager(prompts_dir).get_full_prompt("杂项", description, instruction)
    assert prompt == {
        "system_prompt": "DEFAULT SYSTEM",
        "user_prompt": f"D: {description} | I: {instruction} | {{literal}}",
    }


def test_each_template_falls_back_to_the_default_on_its_own(prompts_dir: Path) -> None:
    prompt = PromptManager(prompts_dir).get_full_prompt("物理", "desc", "edit")
    assert prompt == {"system_prompt": "PHYSICS SYSTEM", "user_prompt": "D: desc | I: edit | {literal}"}


@pytest.mark.parametrize("category", ["../x", "", "物理/../物理", "a\0b"])
def test_unsafe_category_names_use_the_default(prompts_dir: Path, category: str) -> None:
    # "../x" would open the decoy file next to the prompts directory.
    prompt = PromptManager(prompts_dir).get_full_prompt(category, "desc", "edit")
    assert prompt["system_prompt"] == "DEFAULT SYSTEM"


def test_templates_are_read_once(prompts_dir: Path) -> None:
    manager = PromptManager(prompts_dir)
    manager.get_full_prompt("物理", "d", "i")
    (prompts_dir / "物理.system.txt").write_text("CHANGED", encoding="utf-8")
    assert manager.get_full_prompt("物理", "d", "i")["system_prompt"] == "PHYSICS SYSTEM"


def test_a_missing_default_names_the_file(prompts_dir: Path) -> None:
    (prompts_dir / "default.system.txt").unlink()
    with pytest.raises(FileNotFoundError, match="default.system.txt"):
        PromptManager(prompts_dir)


def test_a_bad_placeholder_names_the_file(prompts_dir: Path) -> None:
    # A name no record has is refused when the run is registered (tests/test_templates.py).
    (prompts_dir / "社会.user.txt").write_text("{instruction!r}", encoding="utf-8")
    with pytest.raises(ValueError, match=r"社会\.user\.txt.*\{instruction!r\}"):
        PromptManager(prompts_dir).get_full_prompt("社会", "d", "i")


# --- judge ---------------------------------------------------------------------------


def _drawn(size: tuple[int, int], colour: str) -> Image.Image:
    image = Image.new("RGB", size, "beige")
    ImageDraw.Draw(image).ellipse((10, 10, size[0] - 10, size[1] - 10), fill=colour)
    return image


@pytest.fixture(scope="module")
def items() -> list[JudgeItem]:
    """Three pairs with different image sizes and prompt lengths, so batches need padding."""
    manager = PromptManager(SHIPPED_PROMPTS)
    cases = [
        ("物理", (96, 96), "red", "一个红色的球放在桌子上", "让球从桌子边缘滚落"),
        ("杂项", (160, 96), "green", "A green tree in summer", "Show the same tree in winter"),
        ("指代", (128, 128), "blue", "左边是一个蓝色方块，右边是一个黄色圆", "把左边的物体变成绿色"),
    ]
    return [
        JudgeItem.of_pair(_drawn(size, "white"), _drawn(size, colour),
                          **manager.get_full_prompt(category, description, instruction))
        for category, size, colour, description, instruction in cases
    ]


def _expectation(score: JudgeScore) -> float:
    return sum(int(s) * p for s, p in score.probabilities.items())


def test_one_valid_score_per_item(vlm, items: list[JudgeItem]) -> None:
    scores = Judge(*vlm, batch_size=2).score(items)

    assert len(scores) == len(items)
    for score in scores:
        assert set(score.probabilities) == {str(s) for s in range(11)}
        assert all(p >= 0 for p in score.probabilities.values())
        assert sum(score.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        assert 0.0 <= score.score <= 10.0
        assert score.score == pytest.approx(_expectation(score), abs=1e-9)
    # The inputs differ, so the scores must too (else the padding test below proves nothing).
    assert len({round(s.score, 6) for s in scores}) == len(scores)


def test_left_padding_does_not_change_scores(vlm, items: list[JudgeItem]) -> None:
    alone = Judge(*vlm, batch_size=1).score(items)
    together = Judge(*vlm, batch_size=3).score(items)
    for a, b in zip(alone, together, strict=True):
        assert b.score == pytest.approx(a.score, abs=1e-4)
        for s in a.probabilities:
            assert b.probabilities[s] == pytest.approx(a.probabilities[s], abs=1e-4)


def test_the_same_item_scores_the_same_twice(vlm, items: list[JudgeItem]) -> None:
    judge = Judge(*vlm, batch_size=2)
    in_one_batch = judge.score([items[0], items[0]])
    in_two_calls = judge.score([items[0]]) + judge.score([items[0]])
    assert in_one_batch[0] == in_one_batch[1]
    assert in_two_calls[0] == in_two_calls[1]
    assert in_one_batch[0].score == pytest.approx(in_two_calls[0].score, abs=1e-4)


def test_exposes_its_model_for_residency(vlm) -> None:
    processor, model = vlm
    judge = Judge(processor, model, batch_size=1)
    assert judge.modules() == {"model": model}
    assert judge.score([]) == []
