"""The editor's exact speed-up (no all-ones text mask) and its approximate modes (FP8, step
cache): off unless asked, part of the run id, in the report and status, refused by compare."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from config import Settings, load_settings
from config.settings import SettingsError
from producer.editbench.comparison import ApproximateComparisonError, compare_runs, load_run
from producer.editbench.edit_speed import edit_speed, percentile
from producer.editbench.register import IDENTITY, result_settings
from producer.status import _speed_lines, run_status
from shared.editbench.approximate import APPROXIMATE_KEYS, approximate_modes
from shared.keys import derive_run_id
from shared.messages import EDIT_STAGE
from shared.store import RunStore
from tests.test_run_comparison import report, write
from workers.editing.approximate import ApproximateModeError, apply_approximate_modes, apply_fp8
from workers.editing.editor import Editor
from workers.editing.speed import speed_up_editor

CPU = torch.device("cpu")


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8))


def _edit(pipeline, seed: int = 1) -> np.ndarray:
    settings = Editor.family_of(pipeline).settings(steps=2, size=128, guidance=4.0, negative_prompt=" ",
                                                   tiny=True)
    editor = Editor(pipeline, settings)
    image = np.asarray(editor.edit(_image(), "make the sky orange", seed=seed))
    pipeline._last_editor = editor
    return image


def _forward_inputs(pipeline, seed: int = 0) -> dict:
    """A transformer call of the tiny editor's shapes (image and reference latents, text)."""
    t = pipeline.transformer
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(1, 12, t.config.joint_attention_dim, generator=g)
    latents = torch.randn(1, 32, t.config.in_channels, generator=g)
    return {"hidden_states": latents, "encoder_hidden_states": text, "timestep": torch.tensor([0.5]),
            "img_shapes": [[(1, 4, 4), (1, 4, 4)]], "return_dict": False}


def test_an_all_ones_text_mask_is_dropped_with_the_same_output(editor_pipeline) -> None:
    """Exact: the hook passes None for a mask of ones (SDPA's fused path); tolerance 0 in
    float32 on the CPU. A mask that masks something is passed on unchanged."""
    t = editor_pipeline.transformer
    inputs = _forward_inputs(editor_pipeline)
    ones = torch.ones(1, 12, dtype=torch.long)
    partial = ones.clone()
    partial[0, 8:] = 0
    with torch.inference_mode():
        without = t(**inputs, encoder_hidden_states_mask=None)[0]
        masked = t(**inputs, encoder_hidden_states_mask=partial)[0]
        speed_up_editor(editor_pipeline)
        seen = []
        t.register_forward_pre_hook(lambda m, a, k: seen.append(k["encoder_hidden_states_mask"]),
                                    with_kwargs=True)
        dropped = t(**inputs, encoder_hidden_states_mask=ones)[0]
        kept = t(**inputs, encoder_hidden_states_mask=partial)[0]
    assert seen[0] is None and seen[1] is partial
    assert torch.equal(dropped, without) and torch.equal(kept, masked)
    assert not torch.equal(masked, without)


def test_the_sped_up_editor_makes_the_same_image(editor_pipeline) -> None:
    before = _edit(editor_pipeline)
    speed_up_editor(editor_pipeline)
    assert np.array_equal(_edit(editor_pipeline), before)  # pixel for pixel


def test_approximate_modes_are_off_unless_asked_and_change_the_run_id(editor_pipeline) -> None:
    settings = load_settings({})
    assert (settings.edit_fp8, settings.edit_step_cache) == (False, 0.0)
    assert apply_approximate_modes(editor_pipeline, False, 0.0, CPU) == []
    exact = result_settings(settings, {})
    assert not set(APPROXIMATE_KEYS) & set(exact) and set(APPROXIMATE_KEYS) <= set(IDENTITY)
    ids = {derive_run_id("editbench", [], result_settings(s, {})) for s in (
        settings, Settings(edit_fp8=True), Settings(edit_step_cache=0.1), Settings(edit_step_cache=0.2))}
    assert len(ids) == 4
    assert approximate_modes(result_settings(Settings(edit_fp8=True, edit_step_cache=0.1), {})) == [
        "fp8", "step-cache 0.1"]
    with pytest.raises(SettingsError, match="EVALFLEET_EDIT_STEP_CACHE=1.5"):
        load_settings({"EVALFLEET_EDIT_STEP_CACHE": "1.5"})


def test_fp8_where_it_cannot_run_is_refused_naming_the_setting(editor_pipeline) -> None:
    with pytest.raises(ApproximateModeError, match="EVALFLEET_EDIT_FP8=true needs a CUDA GPU"):
        apply_fp8(editor_pipeline.transformer, CPU)


def test_the_step_cache_counts_its_skips_per_edit_and_a_rerun_repeats_them(editor_pipeline) -> None:
    exact = _edit(editor_pipeline)
    assert editor_pipeline._last_editor.last_cache == {}
    # A threshold near 1 skips every pass it may (the first of each of cond and uncond runs).
    assert apply_approximate_modes(editor_pipeline, False, 0.99, CPU) == ["step-cache 0.99"]
    first = _edit(editor_pipeline)
    counts = editor_pipeline._last_editor.last_cache
    assert counts == {"passes": 4, "skipped_passes": 2}  # 2 steps x (cond, uncond)
    assert not np.array_equal(first, exact)
    again = _edit(editor_pipeline)
    assert editor_pipeline._last_editor.last_cache == counts and np.array_equal(again, first)


def test_compare_refuses_exact_against_approximate_unless_told(tmp_path) -> None:
    exact = write(tmp_path, "exact", report("exact", "d", {"c": {"1": 5.0}}))
    fp8 = report("fp8", "d", {"c": {"1": 4.0}})
    fp8["run"].update(edit_fp8=True)
    fp8 = write(tmp_path, "fp8", fp8)
    with pytest.raises(ApproximateComparisonError, match="exact: exact; fp8: fp8.*--allow-approximate"):
        compare_runs([load_run(exact), load_run(fp8)])
    comparison = compare_runs([load_run(exact), load_run(fp8)], allow_approximate=True)
    assert [r["approximate"] for r in comparison["runs"]] == [[], ["fp8"]]
    assert comparison["notes"] == ["fp8 was edited with approximate modes: fp8"]
    # Two runs with the same modes compare as before.
    assert compare_runs([load_run(fp8), load_run(fp8)])["notes"][0].startswith("fp8")


def test_edit_speed_from_the_workers_records(redis_client) -> None:
    store = RunStore(redis_client, "speed")
    store.register({"job": "editbench", "run_id": "speed"})
    seconds = [10.0, 11.0, 12.0, 30.0]  # the first edit also compiled for 20 s
    for i, s in enumerate(seconds):
        store.mark_done(EDIT_STAGE, f"c|{i}", {"edit_seconds": s, "compile_seconds": 20.0 if i == 0 else 0.0,
                                               "started_at": 100.0 + i, "finished_at": 101.0 + i,
                                               "step_cache": {"passes": 100, "skipped_passes": i}})
    store.add_phase_time("edit", 100.0, 200.0)
    store.add_device("host/cuda:GPU-1")
    store.add_worker_time("w1", "editing", 43.0)
    store.add_worker_time("w1", "compiling", 20.0)
    store.add_worker_time("w1", "loading", 7.0)
    speed = edit_speed(store)
    assert speed["edit_seconds"] == {"n": 4, "mean": 15.75, "p50": 11.0, "p95": 30.0}
    assert speed["compile_seconds"] == 20.0 and speed["wall_seconds"] == 100.0
    assert speed["gpus"] == 1 and speed["gpu_seconds"] == {"run": 100.0, "per_pair": 25.0}
    assert speed["workers"]["w1"]["share"] == {"editing": 0.43, "compiling": 0.2, "loading": 0.07,
                                               "scoring": 0.0, "idle": 0.3}
    assert speed["step_cache"] == {"passes": 400, "skipped_passes": 6}
    assert percentile([3.0], 95) == 3.0 and percentile(list(map(float, range(1, 21))), 95) == 19.0
    assert json.dumps(speed)  # JSON as it is
    # status: the same figures, as a line per run and one per worker.
    status = run_status(redis_client, "speed", now=150.0)
    assert status["edit_speed"]["gpu_seconds"]["run"] == 100.0 and status["approximate"] == []
    lines = _speed_lines([status])
    assert lines[0] == ("speed: edit s/pair mean 15.75 p50 11.00 p95 30.00 (4 edits, exact); "
                        "GPU-s 100 on 1 GPU(s), 25.0 per pair")
    assert lines[1] == "  w1: editing 43%  compiling 20%  loading 7%  scoring 0%  idle 30%"
    assert lines[2] == "  step cache: 6 of 400 transformer passes skipped"
