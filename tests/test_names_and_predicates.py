"""Names and predicates as a user means them: names that differ only by Unicode normalization
are one name; control characters in names reach the terminal escaped; "no relation" in any
spelling is dropped and a predicate repeated in a pair's candidates takes one top-K slot,
both counted; an image too elongated for the editor fails its pair naming the file and field."""

from __future__ import annotations

import base64
import io
import json
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from conftest import private_env, run_producer
from producer.embedded import EmbeddedRedis
from producer.relations.report import relations_report
from shared.editbench.data import prepare_benchmark
from shared.errors import escaped
from shared.relations.data import prepare_data_for_inference
from shared.store import RunStore, connect

NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")


def png_b64(size: tuple[int, int] = (16, 12)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, "green").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def pair(pair_id: str, size: tuple[int, int] = (16, 12)) -> dict:
    return {"pair_id": pair_id, "original_image_b64": png_b64(size),
            "original_description": "a green square", "edit_instruction": "make it round"}


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


# --- Unicode normalization -------------------------------------------------------------------

def test_categories_differing_only_by_normalization_are_one_category(tmp_path):
    lines = tmp_path / "bench.jsonl"
    lines.write_text("\n".join(json.dumps({**pair(str(i)), "category": name})
                               for i, name in enumerate([NFC, NFD, NFC])))
    prepared = prepare_benchmark(lines)
    assert prepared.categories == [NFC] and len(prepared.pairs) == 3 and not prepared.failures


def test_a_category_repeated_in_another_normalization_is_refused_saying_so(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({NFC: [pair("a")], NFD: [pair("b")]}, ensure_ascii=False))
    prepared = prepare_benchmark(bench)
    assert prepared.categories == [NFC] and [p.pair_id for p in prepared.pairs] == ["a"]
    [reason] = prepared.failures.values()
    assert "repeats a category" in reason and "NFC" in reason


def test_relations_class_names_match_across_normalizations(tmp_path):
    stage1, input_path = relations_files(tmp_path, [cand(NFD, "horse", "on", 0.9)], class_names=(NFC, "horse"))
    prepared = prepare_data_for_inference(stage1, input_path, top_k=5)
    assert not prepared.failures and [p["subject"] for p in prepared.pairs] == [NFC]


def test_two_objects_whose_names_differ_only_by_normalization_are_ambiguous(tmp_path):
    stage1, input_path = relations_files(tmp_path, [cand(NFC, "horse", "on", 0.9)],
                                         class_names=(NFC, NFD, "horse"))
    prepared = prepare_data_for_inference(stage1, input_path, top_k=5)
    assert not prepared.pairs
    [reason] = prepared.failures.values()
    assert "ambiguous" in reason


# --- escaped names -----------------------------------------------------------------------------

HOSTILE = "\x1b[2J\x1b[31mred\u202eevil\x07\x9b"


def test_escaping_keeps_text_and_shows_every_control():
    assert escaped(HOSTILE) == "\\x1b[2J\\x1b[31mred\\u202eevil\\x07\\x9b"
    assert escaped("物理 café\tx") == "物理 café\\tx"
    assert escaped("a\nb", keep="\n") == "a\nb"


def test_validate_prints_control_characters_in_names_escaped(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({HOSTILE: [pair("p1"), {"pair_id": HOSTILE}], "ok": [pair("p2")]}))
    proc = run_producer("validate", "editbench", str(bench), env={"EVALFLEET_WORK_DIR": str(tmp_path / "w")},
                        timeout=120)
    assert proc.returncode == 2, proc.stdout  # a pair with problems
    for raw in ("\x1b", "\u202e", "\x07", "\x9b"):
        assert raw not in proc.stdout + proc.stderr
    assert "\\x1b[2J" in proc.stdout


def test_error_messages_print_control_characters_escaped(tmp_path):
    missing = tmp_path / f"bench{HOSTILE}.json"
    proc = run_producer("validate", "editbench", str(missing), env={"EVALFLEET_WORK_DIR": str(tmp_path / "w")},
                        timeout=120)
    assert proc.returncode == 2
    assert "\x1b" not in proc.stderr and "does not exist" in proc.stderr and "\\x1b[2J" in proc.stderr


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


# --- elongated images --------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(1, 20_000), (20_000, 1), (17, 272 + 1)])
def test_an_image_too_elongated_for_the_editor_fails_its_pair_naming_file_and_field(tmp_path, size):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"c": [pair("long", size), pair("edge", (16, 256))]}))
    prepared = prepare_benchmark(bench)
    assert [p.pair_id for p in prepared.pairs] == ["edge"]  # 1:16 is still taken
    [reason] = prepared.failures.values()
    assert str(bench) in reason and "pair_id long" in reason and "original_image_b64" in reason
    assert f"{size[0]}x{size[1]} pixels" in reason
