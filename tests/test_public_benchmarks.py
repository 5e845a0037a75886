"""The public editing benchmarks, read from the layouts their users download (small copies
written by tests/benchmark_layouts.py): each detected, its items found under the benchmark's own
ids with the benchmark's own fields; every problem of a record said at once; a field mapping for
any other layout; parquet through pyarrow, said plainly when it is missing."""

from __future__ import annotations

import json
import sys

import pytest

from benchmark_layouts import (GEDIT, png, write_gedit_jsonl, write_gedit_parquet, write_imgedit,
                               write_kris, write_rise)
from config import Settings
from conftest import run_producer
from producer.editbench.register import register_editbench, run_settings, run_templates
from producer.editbench.sample import write_editbench_sample
from producer.embedded import EmbeddedRedis
from shared.editbench.data import prepare_benchmark
from shared.editbench.formats.fields import Reading
from shared.errors import InputFileError
from shared.keys import derive_run_id
from shared.messages import EDIT_STAGE
from shared.store import connect

NEEDS_PYARROW = "pyarrow is not installed: GEdit-Bench's parquet shards need it (pip install 'evalfleet[benchmarks]')"


def test_gedit_parquet_shards_give_each_key_in_both_languages_with_its_fields(tmp_path):
    pytest.importorskip("pyarrow", reason=NEEDS_PYARROW)
    prepared = prepare_benchmark(write_gedit_parquet(tmp_path / "GEdit-Bench"))
    assert prepared.shape == "gedit" and prepared.failures == {}
    assert prepared.categories == ["background_change", "color_alter", "subject-add"]
    assert [p.key for p in prepared.pairs] == [f"{task}|{lang}/{key}" for task, key, *_ in GEDIT
                                               for lang in ("en", "cn")]
    first, chinese = prepared.pairs[0], prepared.pairs[1]
    assert (first.edit_instruction, chinese.edit_instruction) == ("Make the sky purple", "把天空变成紫色")
    assert first.original_description is None
    assert first.image_bytes == png("red") and len(first.images) == 1  # input_image, not the raw one
    # The row's own fields but its images.
    assert chinese.fields == {"task_type": "background_change", "key": "0a1b", "instruction": "把天空变成紫色",
                              "instruction_language": "cn", "Intersection_exist": True}
    assert [f.name for f in prepared.input_files] == ["train-00000-of-00002.parquet",
                                                      "train-00001-of-00002.parquet"]


def test_gedit_json_lines_export_reads_the_same_pairs_as_the_parquet(tmp_path):
    pytest.importorskip("pyarrow", reason=NEEDS_PYARROW)
    parquet = prepare_benchmark(write_gedit_parquet(tmp_path / "pq"))
    lines = prepare_benchmark(write_gedit_jsonl(tmp_path / "jsonl"))
    assert lines.shape == "gedit" and lines.failures == {}
    # The same pairs; the export's fields hold its image's path too.
    assert [(p.key, p.edit_instruction, p.image_bytes) for p in lines.pairs] == \
        [(p.key, p.edit_instruction, p.image_bytes) for p in parquet.pairs]
    assert [{k: v for k, v in p.fields.items() if k != "input_image"} for p in lines.pairs] == \
        [p.fields for p in parquet.pairs]
    # The raw image instead, by a field mapping.
    raw = prepare_benchmark(tmp_path / "pq", reading=Reading(fields={"original_image_path": "input_image_raw"}))
    assert raw.pairs[0].image_bytes == png("white", 128, 96)


def test_kris_folder_reads_every_category_with_several_input_images(tmp_path):
    prepared = prepare_benchmark(write_kris(tmp_path / "KRIS_Bench"))
    assert prepared.shape == "kris" and prepared.failures == {}
    assert prepared.categories == ["count_change", "temporal_prediction"]
    assert [p.key for p in prepared.pairs] == ["count_change|1", "count_change|2", "temporal_prediction|1",
                                               "temporal_prediction|2"]
    frames = prepared.pairs[2]
    assert [i.file.rsplit("/", 1)[1] for i in frames.images] == ["1-1.png", "1-2.png", "1-3.png"]
    assert frames.fields["explain_en"] == "The ball reaches the ground."
    assert prepared.pairs[1].fields["gt_img"] == "2_gt.png" and prepared.pairs[0].image_extension == "jpg"
    assert len(prepared.image_files) == 6 and len(prepared.input_files) == 2


def test_imgedit_map_reads_ids_as_pairs_and_edit_types_as_categories(tmp_path):
    path = write_imgedit(tmp_path / "ImgEdit")
    prepared = prepare_benchmark(path, reading=Reading(images=str(tmp_path / "ImgEdit" / "singleturn")))
    assert prepared.shape == "imgedit" and prepared.failures == {}
    # Categories in order of first appearance, ids in file order within each.
    assert [p.key for p in prepared.pairs] == ["alter|1082", "style|673", "style|667", "add|97"]
    assert prepared.pairs[1].fields == {"id": "style/000278574.jpg", "prompt": "Make it an ukiyo-e print.",
                                        "edit_type": "style"}
    # Without --images the paths are beside the file: each missing image fails its own pair.
    beside = prepare_benchmark(path)
    assert beside.pairs == [] and set(beside.failures) == {"alter|1082#0", "style|673#0", "add|97#0",
                                                           "style|667#1"}
    assert "record key '1082' (category 'alter') (pair_id 1082): field 'id'" in beside.failures["alter|1082#0"]


def test_rise_list_reads_indexes_subtasks_references_and_several_images(tmp_path):
    prepared = prepare_benchmark(write_rise(tmp_path / "RISEBench"))
    assert prepared.shape == "rise" and prepared.failures == {}
    assert prepared.categories == ["temporal_reasoning", "causal_reasoning", "spatial_reasoning",
                                   "logical_reasoning"]
    by_key = {p.key: p for p in prepared.pairs}
    assert by_key["causal_reasoning|causal_reasoning_1"].fields["reference"] == "A puddle of water."
    assert by_key["causal_reasoning|causal_reasoning_1"].fields["subtask"] == "State Transition"
    assert len(by_key["spatial_reasoning|spatial_reasoning_2"].images) == 2
    assert by_key["logical_reasoning|logical_reasoning_1"].fields["reference_txt"] == "1 2 3"


def test_every_problem_of_a_record_is_said_at_once_with_the_benchmark_s_ids(tmp_path):
    root = write_kris(tmp_path / "KRIS_Bench")
    annotation = root / "count_change" / "annotation.json"
    items = json.loads(annotation.read_text())
    items["2"] = {"ori_img": ["2.png", "missing.png"], "explain_en": "x"}  # no instruction, a missing frame
    annotation.write_text(json.dumps(items))
    env = {"EVALFLEET_WORK_DIR": str(tmp_path / "work"), "EVALFLEET_BROKER_URL": "redis://127.0.0.1:1/0"}
    proc = run_producer("validate", "editbench", str(root), env=env)
    assert proc.returncode == 2, proc.stderr
    assert "format kris (KRIS-Bench" in proc.stdout and "2 categories, 3 usable pairs, 1 problems" in proc.stdout
    [line] = [line for line in proc.stdout.splitlines() if "count_change|2#1" in line]
    assert f"{annotation}: record key '2' (category 'count_change') (pair_id 2): 2 problems" in line
    # The benchmark's own field names.
    assert "field 'ins_en': expected a non-empty string, got None" in line
    assert "field 'ori_img[1]'" in line and "missing.png" in line


def test_a_field_mapping_reads_any_other_layout_and_format_names_it(tmp_path):
    records = [{"uid": f"u{i}", "kind": kind, "text": f"edit {i}", "picture": f"{i}.png", "split": "test"}
               for i, kind in enumerate(["a", "b", "a"])]
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(png("pink"))
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(records))
    fields = ["category=kind", "pair_id=uid", "edit_instruction=text", "original_image_path=picture"]
    env = {"EVALFLEET_WORK_DIR": str(tmp_path / "work"), "EVALFLEET_BROKER_URL": "redis://127.0.0.1:1/0"}
    flags = [arg for field in fields for arg in ("--field", field)]
    proc = run_producer("validate", "editbench", str(path), *flags, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "format records" in proc.stdout and "2 categories, 3 usable pairs, 0 problems" in proc.stdout
    mapping = dict(f.split("=") for f in fields)
    prepared = prepare_benchmark(path, reading=Reading(format="records", fields=mapping))
    assert [p.key for p in prepared.pairs] == ["a|u0", "a|u2", "b|u1"]
    assert prepared.pairs[0].fields == {"uid": "u0", "kind": "a", "text": "edit 0", "picture": "0.png",
                                        "split": "test"}
    # A layout named that the file is not: its records lack the fields, each pair says which.
    named = prepare_benchmark(path, reading=Reading(format="rise"))
    assert named.pairs == [] and "field 'category'" in next(iter(named.failures.values()))
    bad = run_producer("validate", "editbench", str(path), "--field", "colour=kind", env=env)
    assert bad.returncode == 2 and "--field 'colour=kind': write NAME=SOURCE" in bad.stderr


def test_a_missing_pyarrow_is_said_with_the_command_that_installs_it(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow", reason=NEEDS_PYARROW)
    directory = write_gedit_parquet(tmp_path / "GEdit-Bench")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed: the import fails
    with pytest.raises(InputFileError, match=r"needs pyarrow: pip install 'evalfleet\[benchmarks\]'"):
        prepare_benchmark(directory)


def test_run_identity_keeps_evalfleet_s_shapes_and_records_how_a_benchmark_was_read(tmp_path):
    sample = write_editbench_sample(tmp_path / "sample")
    rise = write_rise(tmp_path / "RISEBench")
    with EmbeddedRedis(tmp_path / "redis") as server:
        client = connect(server.url)
        settings = Settings(broker_url=server.url, work_dir=tmp_path / "work")
        own = register_editbench(settings, client, sample)
        native = register_editbench(settings, client, rise)
        items = native.store.get_items(EDIT_STAGE, ["spatial_reasoning|spatial_reasoning_2"])
        own_meta, native_meta = own.store.meta(), native.store.meta()
    # The id of a run of evalfleet's own shape is what it was before benchmarks had formats.
    identity = run_settings(settings, run_templates(settings)).identity()
    assert own.run_id == derive_run_id("editbench", [sample], identity)
    assert "benchmark_reading" not in own_meta
    assert native_meta["benchmark_reading"] == {"format": "rise"}
    [item] = items
    assert item["fields"]["subtask"] == "Component Assembly" and "original_description" not in item
    assert len(item["original_paths"]) == 2 and item["original_path"] == item["original_paths"][0]
