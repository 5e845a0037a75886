"""Predicates as a user means them: "no relation" in any spelling is dropped and a predicate
repeated in a pair's candidates takes one top-K slot, both counted."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from conftest import private_env, run_producer
from producer.embedded import EmbeddedRedis
from producer.relations.report import relations_report
from shared.relations.data import prepare_data_for_inference
from shared.store import RunStore, connect

def cand(subject: str, object_: str, predicate: str, similarity: float) -> dict:
    return {"subject": subject, "object": object_, "predicted_predicate": predicate,
            "similarity": similarity, "has_gt": False, "gt_predicates": []}


def relations_files(tmp_path: Path, candidates: list[dict], class_names=("man", "horse")) -> tuple[Path, Path]:
    Image.new("RGB", (100, 100), "white").save(tmp_path / "7.png")
    objects = [{"id": i, "class_name": name, "bbox": [10 * i, 10 * i, 10 * i + 20, 10 * i + 20]}
               for i, name in enumerate(class_names, 1)]
    stage1, input_path = tmp_path / "stage1.json", tmp_path / "input.json"
    stage1.write_text(json.dumps({"per_image_top100_candidates": {"7": candidates}}))
    input_path.write_text(json.dumps([{"image_id": 7, "image_path": "7.png", "objects": objects}]))
    return stage1, input_path


# --- predicates ------------------------------------------------------------------------------

def test_no_relation_in_any_spelling_is_dropped_and_repeats_take_one_slot(tmp_path):
    candidates = [cand("man", "horse", p, s) for p, s in [
        ("on", 0.70), ("No_Relation", 0.99), ("no-relation", 0.98), ("no  relation", 0.97),
        ("NO RELATION ", 0.96), ("On", 0.90), ("riding", 0.80), ("on ", 0.60), ("in front of", 0.5),
        ("in_front_of", 0.55), ("near", 0.4)]]
    stage1, input_path = relations_files(tmp_path, candidates)
    prepared = prepare_data_for_inference(stage1, input_path, top_k=4)
    [pair_data] = prepared.pairs
    assert [(c["predicate"], c["similarity"]) for c in pair_data["stage1_top_k"]] == [
        ("On", 0.90), ("riding", 0.80), ("in_front_of", 0.55), ("near", 0.4)]
    assert prepared.dropped_no_relation == 4 and prepared.merged_repeats == 3


def test_the_counts_reach_the_preparation_summary_and_the_report(tmp_path, model_cache):
    candidates = [cand("man", "horse", "no_relation", 0.9), cand("man", "horse", "on", 0.8),
                  cand("man", "horse", "ON", 0.7)]
    stage1, input_path = relations_files(tmp_path, candidates)
    with EmbeddedRedis(tmp_path / "redis") as server:
        proc = run_producer("enqueue", "relations", "--stage1", str(stage1), "--input", str(input_path),
                            env=private_env(server, model_cache, tmp_path / "work"))
        assert proc.returncode == 0, proc.stderr
        assert '1 "no relation" dropped, 1 repeated predicates merged' in proc.stderr
        store = RunStore(connect(server.url), proc.stdout.split()[-1])
        summary = relations_report(store)["summary"]
    assert summary["dropped_no_relation"] == 1 and summary["merged_repeated_predicates"] == 1
