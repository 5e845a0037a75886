"""The tiny random Qwen-Image-Edit: built on disk, loaded back like the real one, and editing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import count_builds, load_tiny_editor
from shared.editbench.editor_families import FAMILIES
from workers.editing.editor import Editor, seed_for
from workers.models.loading import (
    ModelNotFoundError,
    load_image_edit_pipeline,
    resolve_model_path,
)
from workers.models.tiny import build_tiny_qwen_image_edit

CPU = torch.device("cpu")
STEPS = 2
SIZE = 128
INSTRUCTION = "make the sky blue and add a red flower"


@pytest.fixture(scope="module")
def pipeline(tiny_editor_dir: Path):
    # One for the file: these tests only read it.
    return load_tiny_editor(tiny_editor_dir)


def _settings(steps: int = STEPS, size: int = SIZE):
    return FAMILIES["QwenImageEditPipeline"].settings(steps=steps, size=size, guidance=4.0,
                                                      negative_prompt=" ", tiny=False)


@pytest.fixture(scope="module")
def editor(pipeline) -> Editor:
    return Editor(pipeline, _settings())


@pytest.fixture(scope="module")
def image() -> Image.Image:
    # Non-square (3:2) and not flat, so aspect handling and the VAE see real content.
    return Image.linear_gradient("L").resize((240, 160)).convert("RGB")


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_loads_back_as_the_real_classes(pipeline) -> None:
    assert type(pipeline).__name__ == "QwenImageEditPipeline"
    assert type(pipeline.transformer).__name__ == "QwenImageTransformer2DModel"
    assert type(pipeline.vae).__name__ == "AutoencoderKLQwenImage"
    assert type(pipeline.text_encoder).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(pipeline.processor).__name__ == "Qwen2VLProcessor"
    assert type(pipeline.tokenizer).__name__ == "Qwen2Tokenizer"
    assert pipeline.device == CPU and pipeline.transformer.dtype == torch.float32
    # The shapes the pipeline relies on: text hidden states feed the transformer's
    # joint attention, and 2x2-packed VAE latents feed its input.
    text_hidden_size = pipeline.text_encoder.config.text_config.hidden_size
    assert text_hidden_size == pipeline.transformer.config.joint_attention_dim
    assert pipeline.transformer.config.in_channels == 4 * pipeline.vae.config.z_dim
    assert pipeline.scheduler.config.use_dynamic_shifting
    assert pipeline.scheduler.config.max_image_seq_len == 8192


def test_edit_returns_the_requested_area_in_the_input_aspect(editor, image) -> None:
    out = editor.edit(image, INSTRUCTION, seed=0)
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    # 3:2 at about 128*128 pixels: 156.8 x 104.5, rounded to multiples of 32.
    assert out.size == editor.output_size(*image.size) == (160, 96)
    assert _pixels(out).std() > 0  # a decoded image, not a constant fill


def test_same_seed_same_pixels_other_seed_other_pixels(editor, image) -> None:
    first = _pixels(editor.edit(image, INSTRUCTION, seed=7))
    again = _pixels(editor.edit(image, INSTRUCTION, seed=7))
    other = _pixels(editor.edit(image, INSTRUCTION, seed=8))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_output_size_keeps_aspect_and_multiples(pipeline) -> None:
    real = Editor(pipeline, _settings(steps=50, size=1024))
    assert real.output_size(1024, 1024) == (1024, 1024)
    width, height = real.output_size(1920, 1080)
    assert width % 32 == 0 and height % 32 == 0
    assert abs(width / height - 16 / 9) < 0.05
    assert abs(width * height - 1024 * 1024) / (1024 * 1024) < 0.05
    with pytest.raises(ValueError, match="EVALFLEET_EDIT_STEPS"):
        Editor(pipeline, dataclasses.replace(_settings(size=1024), steps=0))


def test_modules_are_the_three_weighted_components(editor, pipeline) -> None:
    modules = editor.modules()
    assert set(modules) == {"transformer", "vae", "text_encoder"}
    for name, module in modules.items():
        assert isinstance(module, torch.nn.Module)
        assert module is getattr(pipeline, name)
        assert sum(p.numel() for p in module.parameters()) > 0, name


def test_seed_for_is_stable_31_bit_and_key_specific() -> None:
    key = "run-1/item-000042"
    # Pinned: if the derivation changed, reruns of earlier items would get other images.
    assert seed_for(key) == Editor.seed_for(key) == 903148750
    seeds = {seed_for(f"run-1/item-{i:06d}") for i in range(100)}
    assert len(seeds) == 100
    assert all(0 <= s < 2**31 for s in seeds)


def test_same_seed_builds_identical_weights(tiny_editor_dir: Path, tmp_path: Path) -> None:
    weights = "transformer/diffusion_pytorch_model.safetensors"
    name = "transformer_blocks.0.attn.to_q.weight"
    original = load_file(tiny_editor_dir / weights)[name]
    again = load_file(build_tiny_qwen_image_edit(tmp_path / "again", seed=0) / weights)[name]
    other = load_file(build_tiny_qwen_image_edit(tmp_path / "other", seed=1) / weights)[name]
    assert torch.equal(original, again)
    assert not torch.equal(original, other)
    for part in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        first, second = load_file(tiny_editor_dir / part), load_file(tmp_path / "again" / part)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first), part


def test_resolve_model_path_builds_the_tiny_editor_once(tmp_path: Path, monkeypatch) -> None:
    # Its own folder, not the session's model cache: the build is what is tested.
    builds = count_builds(monkeypatch, "build_tiny_qwen_image_edit")
    first = resolve_model_path("tiny", tmp_path, kind="editor")
    second = resolve_model_path("tiny", tmp_path, kind="editor")

    assert first == second == str(tmp_path / "tiny-qwen-image-edit")
    assert len(builds) == 1
    assert (Path(first) / "model_index.json").is_file()
    # Subdirectories stay traversable and files readable for workers running as other users.
    assert all(p.stat().st_mode & 0o005 == 0o005 for p in Path(first).rglob("*") if p.is_dir())
    assert all(p.stat().st_mode & 0o004 for p in Path(first).rglob("*") if p.is_file())
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "tiny-qwen-image-edit",
        "tiny-qwen-image-edit.lock",
    ]
    hub_id = "Qwen/Qwen-Image-Edit"
    assert resolve_model_path(hub_id, tmp_path, kind="editor") == hub_id
    with pytest.raises(ValueError, match="editor"):
        resolve_model_path("tiny", tmp_path, kind="qwen-image")


def test_missing_pipeline_directory_raises_model_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-editor"
    with pytest.raises(ModelNotFoundError, match="EVALFLEET_EDITOR_MODEL") as err:
        load_image_edit_pipeline(str(missing), revision="", dtype=torch.float32, device=CPU)
    assert str(missing) in str(err.value)


def test_directory_without_a_pipeline_raises_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        load_image_edit_pipeline(str(tmp_path), revision="", dtype=torch.float32, device=CPU)


def test_tiny_must_be_resolved_first() -> None:
    with pytest.raises(ValueError, match="resolve_model_path"):
        load_image_edit_pipeline("tiny", revision="", dtype=torch.float32, device=CPU)
