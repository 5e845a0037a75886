"""A Mixture-of-Experts judge (the architecture of Qwen3-VL-30B-A3B), tiny and random, on the CPU:
loaded through the product's path with the fastest experts implementation, scored by the Judge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from config import Settings
from shared.editbench.prompt_manager import PromptManager
from workers.judging.judge import Judge, JudgeItem
from workers.models import load_vlm
from workers.models import loading
from workers.models.loading import experts_implementation

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def items() -> list[JudgeItem]:
    prompt = PromptManager(Settings().prompts).get_full_prompt("物理", "一个红色的球放在桌子上",
                                                               "让球从桌子边缘滚落")
    return [JudgeItem.of_pair(Image.new("RGB", (96, 96), "white"), Image.new("RGB", size, colour), **prompt)
            for size, colour in (((96, 96), "red"), ((128, 96), "green"), ((96, 128), "blue"))]


def test_a_moe_judge_loads_with_grouped_mm_experts_and_scores(tiny_moe_dir: Path, items) -> None:
    processor, model = load_vlm(str(tiny_moe_dir), revision="", dtype=torch.float32, device=CPU)
    assert type(model).__name__ == "Qwen3VLMoeForConditionalGeneration"
    assert experts_implementation(model) == "grouped_mm"

    scores = Judge(processor, model, batch_size=2).score(items)
    assert len(scores) == 3
    for score in scores:
        assert sum(score.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        assert 0.0 <= score.score <= 10.0
    # The fast experts compute what the loop over experts computes.
    model.set_experts_implementation("eager")
    for fast, eager in zip(scores, Judge(processor, model, batch_size=2).score(items), strict=True):
        assert fast.score == pytest.approx(eager.score, abs=1e-4)


def test_a_dense_judge_reports_no_experts(vlm) -> None:
    _, model = vlm
    assert experts_implementation(model) == "dense"


def test_without_the_fast_experts_the_judge_loads_with_the_default(tiny_moe_dir: Path, items, monkeypatch,
                                                                   caplog) -> None:
    # An experts implementation this transformers does not offer, as on an older release.
    monkeypatch.setattr(loading, "FAST_EXPERTS", "not_offered_here")
    processor, model = load_vlm(str(tiny_moe_dir), revision="", dtype=torch.float32, device=CPU)
    assert "'not_offered_here' is not available" in caplog.text
    assert experts_implementation(model) in ("grouped_mm", "eager")  # transformers' own default
    assert len(Judge(processor, model, batch_size=3).score(items)) == 3
