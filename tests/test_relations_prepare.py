"""Relations preparation and prompt: the README's rules (Relations formats) on small inputs (no processes needed)."""

from __future__ import annotations

import json

import pytest

from producer.relations.enqueue import pack_tasks
from shared.errors import InputFileError
from shared.relations.data import prepare_data_for_inference
from shared.relations.prompt import BoxOutsideImage, build_relation_prompt


def write(tmp_path, stage1: dict, images: list) -> tuple:
    s, i = tmp_path / "recall_results_t.json", tmp_path / "images.json"
    s.write_text(json.dumps({"per_image_top100_candidates": stage1}))
    i.write_text(json.dumps(images))
    return s, i


def cand(subject, object_, predicate, similarity, gt=()):
    return {"subject": subject, "object": object_, "predicted_predicate": predicate,
            "similarity": similarity, "has_gt": bool(gt), "gt_predicates": list(gt)}


IMAGE = {"image_id": 7, "image_path": "img/7.jpg", "relations": [],
         "objects": [{"id": 1, "class_name": "man", "bbox": [10, 10, 50, 90]},
                     {"id": 2, "class_name": "horse", "bbox": [40, 30, 120, 100]}]}


def test_top_k_sorted_by_similarity_without_no_relation(tmp_path):
    cands = [cand("man", "horse", f"p{i}", s) for i, s in enumerate([0.2, 0.9, 0.5, 0.7, 0.1])]
    cands.append(cand("man", "horse", "no relation", 0.99))
    cands.append(cand("horse", "man", "No Relation", 0.8))  # a pair that is all "no relation"
    prepared = prepare_data_for_inference(*write(tmp_path, {"7": cands}, [IMAGE]), top_k=3)
    assert prepared.failures == {}
    [pair] = prepared.pairs
    assert [c["similarity"] for c in pair["stage1_top_k"]] == [0.9, 0.7, 0.5]
    assert [c["predicate"] for c in pair["stage1_top_k"]] == ["p1", "p3", "p2"]


def test_pair_data_fields_and_string_integer_ids_match(tmp_path):
    image = dict(IMAGE, image_id="7")  # a string here, an object key (string) there: still matched
    stage1 = {"7": [cand("man", "horse", "riding", 0.8, gt=["riding", "on"])]}
    prepared = prepare_data_for_inference(*write(tmp_path, stage1, [image]), top_k=10)
    [pair] = prepared.pairs
    assert set(pair) >= {"image_id", "image_path", "subject", "object", "subject_obj", "object_obj",
                         "stage1_top_k", "has_gt", "gt_predicates"}
    assert pair["subject_obj"]["bbox"] == [10, 10, 50, 90]
    assert pair["object_obj"]["class_name"] == "horse"
    assert pair["has_gt"] is True and pair["gt_predicates"] == ["riding", "on"]
    # Relative image paths are resolved against the input file's directory.
    assert pair["image_path"] == str(tmp_path / "img" / "7.jpg")


def test_bad_records_fail_alone_with_file_record_and_field(tmp_path):
    stage1 = {"7": [cand("man", "horse", "on", 0.8), cand("man", "saddle", "on", 0.7)],
              "8": [cand("man", "horse", "on", 0.6)],
              "9": [cand("man", "horse", "on", "high")]}
    image_9 = dict(IMAGE, image_id=9)
    s, i = write(tmp_path, stage1, [IMAGE, image_9])
    prepared = prepare_data_for_inference(s, i, top_k=10)
    assert [p["subject"] + "|" + p["object"] for p in prepared.pairs] == ["man|horse"]
    assert "saddle" in prepared.failures["7|man|saddle"] and str(i) in prepared.failures["7|man|saddle"]
    assert "not in" in prepared.failures["8|man|horse"]
    reason = prepared.failures["9|*|*"]
    assert str(s) in reason and "similarity" in reason and "[0]" in reason


def test_unusable_file_raises_input_file_error(tmp_path):
    s, i = write(tmp_path, {}, [IMAGE])
    s.write_text("{not json")
    with pytest.raises(InputFileError, match="not valid JSON"):
        prepare_data_for_inference(s, i, top_k=10)
    s.write_text(json.dumps({"something_else": {}}))
    with pytest.raises(InputFileError, match="per_image_top100_candidates"):
        prepare_data_for_inference(s, i, top_k=10)


def test_prompt_is_the_spec_text_with_normalized_boxes():
    subject = {"class_name": "windshield", "bbox": [300, 90, 370, 150]}
    object_ = {"class_name": "train", "bbox": [20, 60, 380, 250]}
    prompt = build_relation_prompt(subject, object_, "on", width=400, height=300)
    assert prompt == (
        "这是一张图，物体<|object_ref_start|>windshield<|object_ref_end|>和<|object_ref_start|>train"
        "<|object_ref_end|>在位置(837, 400)和(500, 516)，<|object_ref_start|>windshield<|object_ref_end|>"
        "位于<|box_start|>(750, 300, 925, 500)<|box_end|>，<|object_ref_start|>train<|object_ref_end|>位于"
        "<|box_start|>(50, 200, 950, 833)<|box_end|>，windshield is roughly on train，"
        "请给出windshield和train细节的相对关系"
    )


def test_boxes_stay_below_1000_and_outside_boxes_are_refused():
    whole = {"class_name": "sky", "bbox": [0, 0, 640, 480]}
    prompt = build_relation_prompt(whole, whole, "near", width=640, height=480)
    assert "(0, 0, 999, 999)" in prompt and "(500, 500)" in prompt
    with pytest.raises(BoxOutsideImage):
        build_relation_prompt({"class_name": "x", "bbox": [0, 0, 700, 10]}, whole, "on", 640, 480)


def test_small_images_share_tasks_and_big_ones_do_not() -> None:
    def item(image: str, prompts: int) -> dict:
        return {"image_id": image, "stage1_top_k": [{}] * prompts}

    items = {f"big|{n}": item("big", 10) for n in range(60)}  # 600 prompts: split, alone
    items |= {f"s{i}|{n}": item(f"s{i}", 10) for i in range(30) for n in range(2)}  # 20 each
    items["mid|0"] = item("mid", 100)  # over 256 / 8 prompts: alone
    tasks = pack_tasks(list(items), items, budget=256)

    def prompts(task):
        return sum(len(items[k]["stage1_top_k"]) for k in task)

    def images(task):
        return {items[k]["image_id"] for k in task}

    assert sorted(k for t in tasks for k in t) == sorted(items)  # every key once
    assert all(prompts(t) <= 256 for t in tasks)
    assert sorted(len(t) for t in tasks if images(t) == {"big"}) == [10, 25, 25]
    assert [t for t in tasks if "mid" in images(t)] == [["mid|0"]]
    shared = [t for t in tasks if images(t) - {"big", "mid"}]
    assert all(images(t) <= {f"s{i}" for i in range(30)} for t in shared)
    assert [len(images(t)) for t in shared] == [12, 12, 6]  # small images packed together
    assert [prompts(t) for t in tasks] == sorted((prompts(t) for t in tasks), reverse=True)
