"""Editbench through the fleet with an editor of another family and LoRAs on top:
real Redis, real Celery workers, tiny models. The workers take the editor and its LoRAs
from the run, not from their own environment."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from conftest import read_json, run_producer
from producer.editbench.sample import write_editbench_sample
from shared.keys import content_digest
from test_editbench_e2e import one_pair_per_category
from workers.models.loading import EDITOR, resolve_model_path
from workers.models.tiny import build_tiny_lora


def _run(env: dict[str, str], tmp_path: Path, *extra: str):
    benchmark = one_pair_per_category(write_editbench_sample(tmp_path / "sample"))
    output = tmp_path / "report.json"
    proc = run_producer("run", "editbench", "--benchmark", str(benchmark), "--output", str(output),
                        *extra, env=env)
    return proc, output


def test_flux_kontext_with_a_lora_edits_and_scores_the_sample(editbench_fleet, fleet_env, redis_client,
                                                              model_cache, tmp_path):
    kontext = resolve_model_path("tiny-flux-kontext", model_cache, kind=EDITOR)
    lora = build_tiny_lora(Path(kontext), tmp_path / "lora")
    env = {**fleet_env, "EVALFLEET_EDITOR_MODEL": "tiny-flux-kontext"}
    proc, output = _run(env, tmp_path, "--lora", f"{lora}:0.7")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = read_json(output)

    assert report["overall"]["n"] == 5 and report["failures"] == []
    run = report["run"]
    assert run["editor_model"] == "tiny-flux-kontext"
    assert run["editor_loras"] == [{"path": str(lora), "scale": 0.7, "digest": content_digest(lora)}]
    # What the edits were made with: the family's guidance, the tiny editor's steps and size.
    assert run["edit_settings"] == {"family": "FluxKontextPipeline", "steps": 2, "size": 128,
                                    "guidance": 2.5, "guidance_argument": "guidance_scale",
                                    "negative_prompt": None}
    for category in report["categories"].values():
        [result] = category["results"]
        edited = Image.open(result["edited_image"])
        assert edited.format == "PNG" and 96 * 96 <= edited.width * edited.height <= 160 * 160


def test_qwen_image_edit_plus_edits_and_scores_the_sample(editbench_fleet, fleet_env, redis_client,
                                                          tmp_path):
    env = {**fleet_env, "EVALFLEET_EDITOR_MODEL": "tiny-qwen-image-edit-plus"}
    proc, output = _run(env, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = read_json(output)
    assert report["overall"]["n"] == 5 and report["failures"] == []
    settings = report["run"]["edit_settings"]
    assert settings["family"] == "QwenImageEditPlusPipeline"
    assert settings["guidance_argument"] == "true_cfg_scale" and settings["steps"] == 2


def test_a_lora_that_does_not_fit_the_editor_fails_every_edit_with_its_reason(
        editbench_fleet, fleet_env, redis_client, tiny_editor_lora, tmp_path):
    env = {**fleet_env, "EVALFLEET_EDITOR_MODEL": "tiny-flux-kontext",
           "EVALFLEET_EDITOR_LORAS": str(tiny_editor_lora)}
    proc, output = _run(env, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = read_json(output)
    assert report["overall"]["n"] == 0 and len(report["failures"]) == 5
    reasons = {failure["reason"] for failure in report["failures"]}
    [reason] = reasons
    assert {failure["stage"] for failure in report["failures"]} == {"edit"}
    assert reason.startswith(f"LoRA {tiny_editor_lora} does not match the editor")
    assert "FluxKontextPipeline" in reason and "Traceback" not in reason
