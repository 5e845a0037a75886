"""Editors of every supported family and LoRAs on top: built tiny on disk, loaded back
through the same path as real checkpoints, editing; unsupported classes and LoRAs that
do not fit fail with a message that says what to fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hub_constants
from PIL import Image
from safetensors.torch import load_file, save_file

from config import Settings, SettingsError, parse_lora
from conftest import run_producer
from producer.editbench.register import result_settings
from producer.jobs import JOBS
from producer.preflight import check_run_settings
from shared.editbench.editor_families import FAMILIES, UnsupportedEditorError
from shared.keys import content_digest, derive_run_id
from workers.editing.editor import Editor
from workers.editing.loras import LoraMismatchError
from workers.models.loading import EDITOR, load_image_edit_pipeline, resolve_model_path

CPU = torch.device("cpu")
INSTRUCTION = "make the sky blue and add a red flower"
SUPPORTED = ("QwenImageEditPipeline", "QwenImageEditPlusPipeline", "FluxKontextPipeline")


def _editor_dir(model_cache: Path, name: str) -> str:
    return resolve_model_path(name, model_cache, kind=EDITOR)


def _load(path: str, loras: list[dict] = ()):
    return load_image_edit_pipeline(path, revision="", dtype=torch.float32, device=CPU, loras=loras)


def _tiny_editor(pipeline) -> Editor:
    family = Editor.family_of(pipeline)
    return Editor(pipeline, family.settings(steps=0, size=0, guidance=0, negative_prompt=" ", tiny=True))


def _lora(path: Path, scale: float = 1.0) -> dict:
    """A LoRA as the run records it."""
    return {"path": str(path), "scale": scale, "digest": content_digest(path)}


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.linear_gradient("L").resize((240, 160)).convert("RGB")


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("name, class_name, text_encoders", [
    ("tiny-qwen-image-edit-plus", "QwenImageEditPlusPipeline", {"text_encoder"}),
    ("tiny-flux-kontext", "FluxKontextPipeline", {"text_encoder", "text_encoder_2"}),
])
def test_each_family_loads_back_from_disk_and_edits(model_cache, image, name, class_name, text_encoders):
    path = _editor_dir(model_cache, name)
    assert json.loads((Path(path) / "model_index.json").read_text())["_class_name"] == class_name
    pipeline = _load(path)
    assert type(pipeline).__name__ == class_name
    editor = _tiny_editor(pipeline)
    assert (editor.settings.steps, editor.settings.size) == (2, 128)

    out = editor.edit(image, INSTRUCTION, seed=0)
    # 3:2 at about 128*128 pixels, in multiples of 32: the family's size rule.
    assert out.size == editor.output_size(*image.size) == (160, 96)
    assert _pixels(out).std() > 0
    assert np.array_equal(_pixels(out), _pixels(editor.edit(image, INSTRUCTION, seed=0)))
    # The residency pool moves every weight-holding component, whatever the family has.
    assert set(editor.modules()) == {"transformer", "vae", *text_encoders}


def test_family_defaults_and_what_each_call_takes(image):
    qwen, plus, kontext = (FAMILIES[name] for name in SUPPORTED)
    real = {"steps": 0, "size": 0, "guidance": 0, "negative_prompt": " ", "tiny": False}
    assert (qwen.settings(**real).steps, qwen.settings(**real).guidance) == (50, 4.0)
    assert (plus.settings(**real).steps, plus.settings(**real).guidance) == (40, 4.0)
    flux = kontext.settings(**real)
    assert (flux.steps, flux.guidance, flux.size, flux.negative_prompt) == (28, 2.5, 1024, None)
    # Given values win over defaults; true CFG off (guidance 1) sends no negative prompt.
    given = qwen.settings(steps=7, size=512, guidance=1.0, negative_prompt="blurry", tiny=False)
    assert (given.steps, given.size, given.guidance, given.negative_prompt) == (7, 512, 1.0, None)

    settings = plus.settings(**real)
    arguments = plus.call_arguments(image, INSTRUCTION, settings, 160, 96)
    assert arguments["image"] == [image] and arguments["true_cfg_scale"] == 4.0
    assert arguments["negative_prompt"] == " "
    arguments = kontext.call_arguments(image, INSTRUCTION, flux, 160, 96)
    assert arguments["guidance_scale"] == 2.5 and arguments["max_area"] == 160 * 96
    assert "negative_prompt" not in arguments and "true_cfg_scale" not in arguments


def _fake_pipeline_dir(root: Path, class_name: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": class_name,
                                                       "_diffusers_version": "0.42.1"}))
    return root


def test_unsupported_pipeline_class_fails_at_the_start_listing_the_supported(tmp_path, monkeypatch):
    editor = _fake_pipeline_dir(tmp_path / "sd", "StableDiffusionPipeline")
    with pytest.raises(UnsupportedEditorError) as on_worker:
        _load(str(editor))
    with pytest.raises(SettingsError) as at_start:
        check_run_settings(Settings(editor_model=str(editor)), JOBS["editbench"])
    assert str(on_worker.value) == str(at_start.value)
    assert "StableDiffusionPipeline" in str(at_start.value)
    assert all(name in str(at_start.value) for name in SUPPORTED)

    # A hub id: its model_index.json is read from the local Hugging Face cache.
    snapshot = tmp_path / "hub" / "models--someone--sd-editor" / "snapshots" / "abc123"
    _fake_pipeline_dir(snapshot, "StableDiffusionPipeline")
    (tmp_path / "hub" / "models--someone--sd-editor" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--sd-editor" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(SettingsError, match="FluxKontextPipeline"):
        check_run_settings(Settings(editor_model="someone/sd-editor"), JOBS["editbench"])
    # Not in the cache: the workers check it (and fail its items with the same message).
    check_run_settings(Settings(editor_model="someone/other-editor"), JOBS["editbench"])


def test_the_cli_refuses_an_unsupported_editor_before_registering(tmp_path):
    editor = _fake_pipeline_dir(tmp_path / "sd", "StableDiffusionPipeline")
    proc = run_producer("run", "editbench", env={"EVALFLEET_EDITOR_MODEL": str(editor),
                                                 "EVALFLEET_WORK_DIR": str(tmp_path / "work")})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "supported pipelines are QwenImageEditPipeline, QwenImageEditPlusPipeline, " \
           "FluxKontextPipeline" in proc.stderr
    assert not (tmp_path / "work" / "redis").exists()  # nothing started, nothing registered


def test_a_lora_changes_the_edit_by_its_scale(model_cache, tiny_editor_lora, image):
    base = _editor_dir(model_cache, "tiny")
    assert (tiny_editor_lora / "pytorch_lora_weights.safetensors").is_file()
    plain = _tiny_editor(_load(base)).edit(image, INSTRUCTION, seed=3)
    with_lora = _tiny_editor(_load(base, [_lora(tiny_editor_lora)])).edit(image, INSTRUCTION, seed=3)
    at_zero = _tiny_editor(_load(base, [_lora(tiny_editor_lora, 0.0)])).edit(image, INSTRUCTION, seed=3)
    assert not np.array_equal(_pixels(plain), _pixels(with_lora))
    assert np.array_equal(_pixels(plain), _pixels(at_zero))


def test_a_lora_of_another_family_fails_naming_it_and_the_layers(model_cache, tiny_editor_lora):
    kontext = _editor_dir(model_cache, "tiny-flux-kontext")
    with pytest.raises(LoraMismatchError) as err:
        _load(kontext, [_lora(tiny_editor_lora)])
    message = str(err.value)
    assert str(tiny_editor_lora) in message and "FluxKontextPipeline" in message
    assert "are not layers of the editor" in message and "transformer.transformer_blocks.1" in message


def test_a_lora_of_other_shapes_or_changed_since_registration_fails(model_cache, tiny_editor_lora, tmp_path):
    base = _editor_dir(model_cache, "tiny")
    tensors = load_file(tiny_editor_lora / "pytorch_lora_weights.safetensors")
    # The same layers of a wider model: the down projections take 8 more inputs.
    wider = {k: torch.zeros(v.shape[0], v.shape[1] + 8) if ".lora_A." in k else v for k, v in tensors.items()}
    other = tmp_path / "wider.safetensors"
    save_file(wider, other)
    with pytest.raises(LoraMismatchError, match=f"LoRA {other} does not match .*size mismatch"):
        _load(base, [_lora(other)])

    recorded = _lora(other)
    save_file(tensors, other)
    with pytest.raises(LoraMismatchError, match="changed since the run was registered"):
        _load(base, [recorded])


def test_the_run_identity_holds_each_lora_by_content(tiny_editor_lora, tmp_path):
    lora_file = tmp_path / "style.safetensors"
    lora_file.write_bytes((tiny_editor_lora / "pytorch_lora_weights.safetensors").read_bytes())
    plain = Settings()
    with_lora = plain.replace(editor_loras=f"{lora_file}:0.8")
    settings = result_settings(with_lora, {})
    assert settings["editor_loras"] == [{"path": str(lora_file), "scale": 0.8,
                                         "digest": content_digest(lora_file)}]
    run_ids = {derive_run_id("editbench", [], result_settings(s, {}))
               for s in (plain, with_lora, plain.replace(editor_loras=str(lora_file)))}
    assert len(run_ids) == 3
    before = derive_run_id("editbench", [], settings)
    lora_file.write_bytes(lora_file.read_bytes() + b" ")  # the same path, other contents
    assert derive_run_id("editbench", [], result_settings(with_lora, {})) != before


def test_lora_settings_parse_path_and_scale(tmp_path):
    assert parse_lora("style.safetensors:0.5") == ("style.safetensors", 0.5)
    assert parse_lora("loras/style") == ("loras/style", 1.0)
    assert parse_lora("odd:name.safetensors") == ("odd:name.safetensors", 1.0)
    with pytest.raises(SettingsError, match="finite"):
        parse_lora("style.safetensors:nan")
    with pytest.raises(SettingsError, match="no such file"):
        check_run_settings(Settings(editor_loras=str(tmp_path / "missing.safetensors")), JOBS["editbench"])
