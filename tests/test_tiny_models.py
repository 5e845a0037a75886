"""The tiny random Qwen3-VL: built on disk, loaded back like the real model, and generating."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import count_builds
from workers.models import (
    ModelNotFoundError,
    build_tiny_qwen3_vl,
    load_vlm,
    pick_device,
    pick_dtype,
    resolve_model_path,
)
from workers.models.tokenizer import QWEN_SPECIAL_TOKENS
from workers.relations.generator import RelationGenerator

PROMPTS = [
    "Where is the cat relative to the table?",
    "这是一张图，请给出物体的相对位置关系",
    "Is the person holding the cup?",
]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def image() -> Image.Image:
    # A gradient, not a flat colour, so the vision tower sees varied patches.
    return Image.linear_gradient("L").resize((256, 256)).convert("RGB")


def _chat_text(processor, prompt: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_loads_back_as_the_real_classes(vlm) -> None:
    processor, model = vlm
    assert type(processor).__name__ == "Qwen3VLProcessor"
    assert type(processor.tokenizer).__name__ == "Qwen2Tokenizer"
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert processor.tokenizer.padding_side == "left"
    assert not model.training
    assert model.device == CPU and model.dtype == torch.float32


def test_special_tokens_are_single_ids(vlm) -> None:
    tokenizer = vlm[0].tokenizer
    for token in QWEN_SPECIAL_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id], token

    ids = tokenizer.encode("<|object_ref_start|>cat<|object_ref_end|>", add_special_tokens=False)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|object_ref_start|>")
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|object_ref_end|>")
    assert len(ids) >= 3
    assert tokenizer.decode(ids, skip_special_tokens=True) == "cat"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token == "<|im_end|>"


def test_left_padding_pads_the_shorter_prompt_on_the_left(vlm) -> None:
    tokenizer = vlm[0].tokenizer
    batch = tokenizer(["cat", "the cat is roughly on the table"], padding=True)
    short_ids, short_mask = batch["input_ids"][0], batch["attention_mask"][0]
    assert short_mask[0] == 0 and short_mask[-1] == 1
    assert short_ids[0] == tokenizer.pad_token_id


def test_chat_template_matches_qwen3_vl_format(vlm) -> None:
    text = _chat_text(vlm[0], "hi")
    assert text == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_processor_expands_the_image_into_matching_vision_tokens(vlm, image) -> None:
    processor, model = vlm
    inputs = processor(text=[_chat_text(processor, "hi")], images=[image], return_tensors="pt")

    merge = model.config.vision_config.spatial_merge_size
    expected = int(inputs["image_grid_thw"].prod()) // merge**2
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == expected
    assert 16 <= n_image_tokens <= 64  # "a few dozen": small enough for CPU tests
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.vision_start_token_id == processor.tokenizer.convert_tokens_to_ids(
        "<|vision_start|>"
    )
    with torch.inference_mode():
        logits = model(**inputs).logits
    assert logits.shape == (*inputs["input_ids"].shape, len(processor.tokenizer))


def test_generator_answers_every_prompt(vlm, image) -> None:
    generator = RelationGenerator(*vlm, max_batch=2, max_new_tokens=8, temperature=0.0)
    answers = generator.generate(image, PROMPTS, seed=0)
    assert len(answers) == len(PROMPTS)
    assert all(isinstance(a, str) and a for a in answers)
    assert 0 < generator.generated_tokens <= len(PROMPTS) * 8


def test_greedy_generation_is_deterministic(vlm, image) -> None:
    generator = RelationGenerator(*vlm, max_batch=2, max_new_tokens=8, temperature=0.0)
    assert generator.generate(image, PROMPTS, seed=0) == generator.generate(image, PROMPTS, seed=1)


def test_batching_does_not_change_greedy_answers(vlm, image) -> None:
    # Prompts of different lengths share a batch only if left padding and the
    # padded multimodal rope positions are right.
    one_by_one = RelationGenerator(*vlm, max_batch=1, max_new_tokens=8, temperature=0.0)
    all_at_once = RelationGenerator(*vlm, max_batch=3, max_new_tokens=8, temperature=0.0)
    assert one_by_one.generate(image, PROMPTS, seed=0) == all_at_once.generate(image, PROMPTS, seed=0)


def test_sampling_is_reproducible_for_a_seed(vlm, image) -> None:
    generator = RelationGenerator(*vlm, max_batch=2, max_new_tokens=8, temperature=1.0)
    first = generator.generate(image, PROMPTS, seed=7)
    assert generator.generate(image, PROMPTS, seed=7) == first


def test_same_seed_builds_identical_weights(tiny_vlm_dir: Path, tmp_path: Path) -> None:
    name = "model.language_model.layers.0.self_attn.q_proj.weight"
    original = load_file(tiny_vlm_dir / "model.safetensors")[name]
    again = load_file(build_tiny_qwen3_vl(tmp_path / "again", seed=0) / "model.safetensors")[name]
    other = load_file(build_tiny_qwen3_vl(tmp_path / "other", seed=1) / "model.safetensors")[name]
    assert torch.equal(original, again)
    assert not torch.equal(original, other)


def test_resolve_model_path_builds_tiny_once(tmp_path: Path, monkeypatch) -> None:
    # Its own folder, not the session's model cache: the build is what is tested.
    builds = count_builds(monkeypatch, "build_tiny_qwen3_vl")
    first = resolve_model_path("tiny", tmp_path)
    second = resolve_model_path("tiny", tmp_path)

    assert first == second == str(tmp_path / "tiny-qwen3-vl")
    assert len(builds) == 1
    assert (Path(first) / "config.json").is_file()
    # No temp directories are left behind next to it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-qwen3-vl", "tiny-qwen3-vl.lock"]
    assert resolve_model_path("Qwen/Qwen3-VL-8B-Instruct", tmp_path) == "Qwen/Qwen3-VL-8B-Instruct"


def test_missing_model_directory_raises_model_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match="EVALFLEET_RELATIONS_MODEL") as err:
        load_vlm(str(missing), revision="", dtype=torch.float32, device=CPU)
    assert str(missing) in str(err.value)


def test_pick_device_and_dtype() -> None:
    assert pick_device("cpu") == CPU
    assert pick_dtype("auto", CPU) == torch.float32
    assert pick_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert pick_dtype("float16", CPU) == torch.float16
    with pytest.raises(ValueError, match="EVALFLEET_DTYPE"):
        pick_dtype("int8", CPU)
