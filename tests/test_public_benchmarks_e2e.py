"""A public benchmark's published layout through the fleet (real Redis, real Celery workers,
the tiny editor and judge): KRIS-Bench's folder, its ids in the report, its fields in the
items, and its item of three input frames edited by Qwen-Image-Edit-Plus or failed alone by
an editor that takes one image; GEdit-Bench's parquet shards scored by its own protocol."""

from __future__ import annotations

import pytest

from benchmark_layouts import GEDIT, write_gedit_parquet, write_kris
from conftest import private_env, read_json, run_producer, started_fleet
from held_judge import held_judge
from producer.embedded import EmbeddedRedis
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


def test_gedit_shards_through_the_fleet_give_the_protocol_s_table_by_language_and_intersection(
        model_cache, tmp_path):
    """GEdit's parquet download, its own rubric, a judge that states 7 for every criterion: each
    pair's VIEScore is sqrt(7 x 7) = 7, in every column the protocol has."""
    pytest.importorskip("pyarrow", reason="pyarrow is not installed: GEdit-Bench's parquet shards need it")
    output = tmp_path / "report.json"
    with held_judge() as judge, EmbeddedRedis(tmp_path / "redis") as server:
        judge.released.set()  # answer at once
        env = private_env(server, model_cache, tmp_path / "work", **judge.env())
        with started_fleet(env, ["edit", "score"], tmp_path, name="gedit"):
            proc = run_producer("run", "editbench", "--benchmark", str(write_gedit_parquet(tmp_path / "GEdit")),
                                "--rubric", "gedit", "--output", str(output), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = read_json(output)
    assert report["overall"]["n"] == 2 * len(GEDIT) and report["failures"] == []
    ids = {r["pair_id"] for results in report["categories"].values() for r in results["results"]}
    assert ids == {f"{language}/{key}" for _, key, *_ in GEDIT for language in ("en", "cn")}
    protocol = report["protocol"]
    assert protocol["scoring"] == "stated"
    assert [c["name"] for c in protocol["columns"]] == ["en", "en / intersection", "cn", "cn / intersection"]
    with_intersection = any(row[4] for row in GEDIT)
    for column, mean in protocol["headline"].items():
        assert mean == (7.0 if "intersection" not in column or with_intersection else None), column
