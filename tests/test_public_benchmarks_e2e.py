"""A public benchmark's published layout through the fleet (real Redis, real Celery workers,
the tiny editor and judge): KRIS-Bench's folder, its ids in the report, its fields in the
items, and its item of three input frames edited by Qwen-Image-Edit-Plus or failed alone by
an editor that takes one image."""

from __future__ import annotations

from benchmark_layouts import write_kris
from conftest import read_json, run_producer
from shared.messages import SCORE_STAGE
from shared.store import RunStore, connect


def _run(env, tmp_path):
    output = tmp_path / "report.json"
    proc = run_producer("run", "editbench", "--benchmark", str(write_kris(tmp_path / "KRIS_Bench")),
                        "--output", str(output), env=env)
    return proc, read_json(output)


def test_kris_folder_runs_and_an_editor_of_one_image_fails_only_the_multi_image_item(
        editbench_fleet, fleet_env, redis_client, tmp_path):
    proc, report = _run(fleet_env, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one pair failed
    assert report["run"]["benchmark_shape"] == "kris"
    assert list(report["categories"]) == ["count_change", "temporal_prediction"]
    assert report["overall"]["n"] == 3
    [failure] = report["failures"]
    assert (failure["key"], failure["stage"]) == ("temporal_prediction|1", "edit")
    assert "3 input images and the editor's QwenImageEditPipeline takes one" in failure["reason"]
    scores = RunStore(connect(fleet_env["EVALFLEET_BROKER_URL"]), report["run"]["run_id"])
    [item] = scores.get_items(SCORE_STAGE, ["count_change|2"])
    assert item["fields"] == {"ori_img": "2.png", "ins_en": "Remove one bird.", "explain_en": "Two birds remain.",
                              "gt_img": "2_gt.png"}


def test_qwen_image_edit_plus_edits_the_item_of_three_input_frames(editbench_fleet, fleet_env, redis_client,
                                                                   tmp_path):
    proc, report = _run({**fleet_env, "EVALFLEET_EDITOR_MODEL": "tiny-qwen-image-edit-plus"}, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["overall"]["n"] == 4 and report["failures"] == []
    [frames] = [r for r in report["categories"]["temporal_prediction"]["results"] if r["pair_id"] == "1"]
    assert frames["score"] is not None
