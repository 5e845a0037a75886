"""The editbench file shapes people have: each is detected, reported, and loads the same benchmark
to the same items; a bad record or line fails alone; a file of no known shape says what it holds.
``python -m producer validate editbench FILE`` lists every problem and registers nothing."""

from __future__ import annotations

import json

import pytest

from config import Settings
from conftest import run_producer
from producer.editbench.register import register_editbench
from producer.editbench.sample import write_editbench_sample
from producer.embedded import EmbeddedRedis
from shared.editbench.data import SHAPES, prepare_benchmark
from shared.errors import InputFileError
from shared.store import connect


def loaded(prepared) -> list[tuple]:
    """Everything a run takes from a pair, in order."""
    return [(p.key, p.image_bytes, p.image_extension, p.original_description, p.edit_instruction)
            for p in prepared.pairs]


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("image_files", [False, True], ids=["base64", "image-files"])
def test_every_shape_of_the_sample_loads_the_same_items(tmp_path, shape, image_files):
    reference = prepare_benchmark(write_editbench_sample(tmp_path / "reference"))
    assert len(reference.pairs) == 15 and reference.shape == "category-map"
    # Another working directory: image paths are relative to the file, not to where the command runs.
    path = write_editbench_sample(tmp_path / shape, shape, image_files)
    prepared = prepare_benchmark(path)
    assert prepared.shape == shape
    assert prepared.failures == {}
    assert prepared.categories == reference.categories
    assert loaded(prepared) == loaded(reference)
    assert len(prepared.image_files) == (15 if image_files else 0)


def test_json_lines_are_detected_by_content_and_a_bad_line_fails_alone(tmp_path):
    sample = write_editbench_sample(tmp_path / "s", "json-lines")
    lines = sample.read_text(encoding="utf-8").splitlines()
    pair = json.loads(lines[1])
    lines[1] = json.dumps({**pair, "edit_instruction": 7}, ensure_ascii=False)
    lines[4] = '{"category": "物理", "pair_id": '                      # not JSON
    lines[5] = json.dumps({**json.loads(lines[5]), "category": None})  # no usable category
    lines[6] = "[1, 2]"                                                 # not an object
    path = tmp_path / "benchmark.txt"  # not .jsonl: detected by content
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")

    prepared = prepare_benchmark(path)
    assert prepared.shape == "json-lines"
    assert len(prepared.pairs) == 11
    reasons = prepared.failures
    assert set(reasons) == {f"物理|{pair['pair_id']}#1", "?line 5|*", "?line 6|*", "?line 7|*"}
    assert f"{path}: record line 2 (category '物理') (pair_id {pair['pair_id']}): field 'edit_instruction'" \
        in reasons[f"物理|{pair['pair_id']}#1"]
    assert f"{path}: line 5: not valid JSON" in reasons["?line 5|*"]
    assert "record line 6: field 'category'" in reasons["?line 6|*"]
    assert "record line 7: field 'pair': expected an object" in reasons["?line 7|*"]


def test_a_one_line_json_lines_file_is_json_lines(tmp_path):
    sample = write_editbench_sample(tmp_path / "s", "json-lines")
    path = tmp_path / "one.json"
    path.write_text(sample.read_text(encoding="utf-8").splitlines()[0], encoding="utf-8")
    prepared = prepare_benchmark(path)
    assert prepared.shape == "json-lines" and [p.key for p in prepared.pairs] == ["物理|物理-1"]


def test_categories_key_keeps_metadata_out_and_category_list_fails_bad_entries_alone(tmp_path):
    sample = json.loads(write_editbench_sample(tmp_path / "s", "category-list").read_text(encoding="utf-8"))
    listed = [sample[0], "not a category", {"category_name": "环境", "data_pairs": []}, sample[2],
              {"category_name": "物理", "data_pairs": sample[0]["data_pairs"]}]
    path = tmp_path / "list.json"
    path.write_text(json.dumps(listed, ensure_ascii=False), encoding="utf-8")
    prepared = prepare_benchmark(path)
    assert prepared.shape == "category-list"
    assert prepared.categories == ["物理", "环境", "社会"]
    assert [p.category for p in prepared.pairs] == ["物理"] * 3 + ["社会"] * 3
    assert "[1]: expected an object with 'category_name'" in prepared.failures["?[1]|*"]
    assert "[2] (category '环境'): has no pairs" in prepared.failures["环境|*"]
    assert "[4] (category '物理'): repeats a category" in prepared.failures["物理|*"]

    wrapped = {"name": "mine", "version": "2", "categories": {"物理": sample[0]["data_pairs"]}}
    path.write_text(json.dumps(wrapped, ensure_ascii=False), encoding="utf-8")
    prepared = prepare_benchmark(path)
    assert prepared.shape == "categories-key"
    assert prepared.categories == ["物理"] and prepared.failures == {}


UNKNOWN_SHAPES = [
    ("object-without-lists", {"name": "bench", "data": {"物理": []}}, "a JSON object with the keys 'name', 'data'"),
    ("list-of-pairs", [{"pair_id": 1, "edit_instruction": "x"}],
     "a JSON list of 1 items, the first an object with the keys 'pair_id', 'edit_instruction'"),
    ("empty-list", [], "an empty JSON list"),
    ("a-string", "bench", "a single JSON value 'bench'"),
]


@pytest.mark.parametrize("case, data, found", UNKNOWN_SHAPES, ids=[c[0] for c in UNKNOWN_SHAPES])
def test_a_file_of_no_known_shape_says_what_it_found_and_what_is_expected(tmp_path, case, data, found):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(InputFileError) as info:
        prepare_benchmark(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a benchmark: found {found}"), message
    for form in SHAPES.values():
        assert form in message


def test_image_paths_fail_alone_when_missing_doubled_or_outside_the_data_root(tmp_path):
    path = write_editbench_sample(tmp_path / "s", "category-map", image_files=True)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["物理"][0]["original_image_path"] = "images/nowhere.png"
    data["物理"][1]["original_image_b64"] = "aGVsbG8="
    data["物理"][2]["original_image_path"] = str(tmp_path / "outside.png")
    (tmp_path / "outside.png").write_bytes((path.parent / "images" / "环境-1.png").read_bytes())
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")

    prepared = prepare_benchmark(path, data_root=path.parent)
    assert len(prepared.pairs) == 12
    missing, doubled, outside = (prepared.failures[f"物理|物理-{i}#{i - 1}"] for i in (1, 2, 3))
    assert "field 'original_image_path'" in missing and "images/nowhere.png: cannot read the file: it does not exist" in missing
    assert "not both" in doubled
    assert "outside the data root" in outside


def test_validate_lists_every_problem_and_changes_nothing(tmp_path):
    path = write_editbench_sample(tmp_path / "s", "json-lines")
    before = sorted(tmp_path.rglob("*"))
    env = {"EVALFLEET_WORK_DIR": str(tmp_path / "work"), "EVALFLEET_BROKER_URL": "redis://127.0.0.1:1/0"}
    clean = run_producer("validate", "editbench", str(path), env=env)
    assert clean.returncode == 0, clean.stderr
    assert "shape json-lines" in clean.stdout and "5 categories, 15 usable pairs, 0 problems" in clean.stdout
    assert "no problems" in clean.stdout

    with path.open("a", encoding="utf-8") as f:
        f.write('{"category": "物理", "pair_id": "new", "original_description": 7}\n')
    bad = run_producer("validate", "editbench", str(path), env=env)
    assert bad.returncode == 2
    assert "5 categories, 15 usable pairs, 1 problems" in bad.stdout
    # Every problem of the record at once, each with its field.
    [line] = [line for line in bad.stdout.splitlines() if "pair_id new" in line]
    assert "record line 16 (category '物理') (pair_id new): 3 problems: field 'original_description'" in line
    assert "field 'edit_instruction': expected a non-empty string, got None" in line
    assert "field 'original_image_b64': expected a base64 string" in line
    # No Redis was needed (the broker URL points nowhere), and no file but the log was written.
    assert [p for p in sorted(tmp_path.rglob("*")) if "work" not in p.parts] == before

    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"name": "x"}', encoding="utf-8")
    proc = run_producer("validate", "editbench", str(unknown), env=env)
    assert proc.returncode == 2 and "not a benchmark: found a JSON object" in proc.stderr


def test_the_run_records_the_shape_and_an_image_file_is_part_of_the_run(tmp_path):
    path = write_editbench_sample(tmp_path / "s", "category-list", image_files=True)
    with EmbeddedRedis(tmp_path / "redis") as server:
        client = connect(server.url)
        settings = Settings(broker_url=server.url, work_dir=tmp_path / "work")
        first = register_editbench(settings, client, path)
        assert first.store.meta()["benchmark_shape"] == "category-list"
        image = path.parent / "images" / "物理-1.png"
        image.write_bytes((path.parent / "images" / "物理-2.png").read_bytes())
        second = register_editbench(settings, client, path)
    assert second.store.run_id != first.store.run_id
