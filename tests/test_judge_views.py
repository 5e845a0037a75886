"""The judge sees what each protocol shows it: KRIS-Bench's explanation, input frames and
ground-truth image, RISEBench's reference answer and reference image, each to the criteria
the benchmark's own scorer gives them, in the order the prompt names (real Redis, real Celery
workers, edits made elsewhere, a real HTTP judge endpoint that keeps every request); the same
rubrics on a benchmark without those fields; and rows of several images through the tiny
local judge."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT, one_pair_benchmark, private_env, read_json, run_producer, started_fleet
from held_judge import held_judge
from producer.embedded import EmbeddedRedis
from workers.judging.judge import Judge, JudgeImage, JudgeItem

PALETTE = {"white": (255, 255, 255), "red": (255, 0, 0), "lime": (0, 255, 0), "blue": (0, 0, 255),
           "yellow": (255, 255, 0), "black": (0, 0, 0)}
EDIT = "black"  # every edit; inputs are white (or red, lime, blue frames), references yellow
CRITERIA = {"INSTRUCTION FOLLOWING": "instruction_following", "DETAIL PRESERVATION": "detail_preservation",
            "VISUAL QUALITY": "visual_quality", "KNOWLEDGE PLAUSIBILITY": "knowledge_plausibility",
            "APPEARANCE CONSISTENCY": "consistency", "REASONING:": "reasoning",
            "VISUAL PLAUSIBILITY": "plausibility"}


def _image(path: Path, colour: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), colour).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")


def _colour(url: str) -> str:
    """The palette colour nearest to a request's image (JPEG edits shift colours a little)."""
    pixel = Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))).convert("RGB").getpixel((32, 24))
    return min(PALETTE, key=lambda name: sum((a - b) ** 2 for a, b in zip(PALETTE[name], pixel)))


def _rows(judge) -> list[dict]:
    """Each request the judge got: its criterion, the colours of its images in order, its user text."""
    rows = []
    for body in judge.bodies:
        system, user = body["messages"]
        images = [part["image_url"]["url"] for part in user["content"] if part["type"] == "image_url"]
        [text] = [part["text"] for part in user["content"] if part["type"] == "text"]
        [criterion] = [name for marker, name in CRITERIA.items() if marker in system["content"]]
        rows.append({"criterion": criterion, "images": [_colour(url) for url in images], "text": text})
    return rows


def _row(rows: list[dict], criterion: str, instruction: str) -> dict:
    [row] = [r for r in rows if r["criterion"] == criterion and f"Edit instruction: {instruction}" in r["text"]]
    return row


@pytest.fixture(scope="module")
def fleet(model_cache, tmp_path_factory):
    """A fleet whose judge is an endpoint answering 5 to every request, keeping each."""
    tmp = tmp_path_factory.mktemp("views")
    with held_judge("5") as judge, EmbeddedRedis(tmp / "redis") as server:
        judge.released.set()  # answer at once
        env = private_env(server, model_cache, tmp / "work", **judge.env())
        with started_fleet(env, ["edit", "score"], tmp, name="views"):
            yield env, judge


def _judged(fleet, tmp_path: Path, benchmark: Path, edits: Path, *options: str):
    env, judge = fleet
    judge.bodies.clear()
    output = tmp_path / "report.json"
    proc = run_producer("run", "editbench", "--benchmark", str(benchmark), "--edits", str(edits),
                        "--output", str(output), *options, env=env)
    return proc, (read_json(output) if output.exists() else None), _rows(judge)


def write_kris_views(directory: Path) -> tuple[Path, Path]:
    """A knowledge item, a viewpoint item with its ground truth (and one whose ground truth is
    missing), a temporal item of three frames; and their edits in KRIS's scorer layout."""
    bench, edits = directory / "KRIS_Bench", directory / "results"
    items = {
        "physics": {"1": {"ori_img": "1.png", "ins_en": "Let the ball drop.",
                          "explain_en": "Gravity pulls the ball to the floor."}},
        "viewpoint_change": {"1": {"ori_img": "1.png", "ins_en": "Show the cube from above.",
                                   "explain_en": "A square seen from the top.", "gt_img": "1_gt.png"},
                             "2": {"ori_img": "2.png", "ins_en": "Show the cone from above.",
                                   "explain_en": "A circle.", "gt_img": "2_gt.png"}},
        "temporal_prediction": {"1": {"ori_img": ["1-1.png", "1-2.png", "1-3.png"], "ins_en": "Draw frame 4.",
                                      "explain_en": "The ball lands."}},
    }
    for category, annotation in items.items():
        (bench / category).mkdir(parents=True)
        (bench / category / "annotation.json").write_text(json.dumps(annotation), encoding="utf-8")
        for pair_id, item in annotation.items():
            frames = item["ori_img"] if isinstance(item["ori_img"], list) else [item["ori_img"]]
            for name, colour in zip(frames, ["red", "lime", "blue"] if len(frames) > 1 else ["white"]):
                _image(bench / category / name, colour)
            _image(edits / category / f"{pair_id}.jpg", EDIT)
    _image(bench / "viewpoint_change" / "1_gt.png", "yellow")  # 2_gt.png is missing
    return bench, edits


def test_kris_explanation_frames_and_ground_truth_reach_the_criteria_kris_gives_them(fleet, tmp_path) -> None:
    bench, edits = write_kris_views(tmp_path)
    proc, report, rows = _judged(fleet, tmp_path, bench, edits, "--rubric", "kris")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the pair whose ground truth is missing
    [failure] = report["failures"]
    assert (failure["key"], failure["stage"]) == ("viewpoint_change|2", "score")
    assert "gt_img" in failure["reason"] and str(bench / "viewpoint_change" / "2_gt.png") in failure["reason"]
    assert report["overall"]["n"] == 3 and report["overall"]["mean"] == 5.0

    two = "The first image is the ORIGINAL image. The second image is the EDITED image."
    explanation = "Explanation of the expected result: Gravity pulls the ball to the floor."
    # In a knowledge category both instruction following and knowledge plausibility read the
    # explanation (KRIS's dual request); consistency does not.
    for criterion in ("instruction_following", "knowledge_plausibility"):
        row = _row(rows, criterion, "Let the ball drop.")
        assert row["images"] == ["white", EDIT] and two in row["text"] and explanation in row["text"]
    row = _row(rows, "detail_preservation", "Let the ball drop.")
    assert row["images"] == ["white", EDIT] and "Explanation" not in row["text"]
    # The viewpoint item's instruction following sees the ground truth after the edit, as KRIS sends it.
    row = _row(rows, "instruction_following", "Show the cube from above.")
    assert row["images"] == ["white", EDIT, "yellow"] and "Explanation" not in row["text"]
    assert row["text"].startswith(f"{two} The third image is the GROUND-TRUTH image (a correct result of the edit).")
    assert _row(rows, "detail_preservation", "Show the cube from above.")["images"] == ["white", EDIT]
    # The temporal item's frames, in order, then the edit.
    for criterion in ("instruction_following", "detail_preservation"):
        row = _row(rows, criterion, "Draw frame 4.")
        assert row["images"] == ["red", "lime", "blue", EDIT]
        assert row["text"].startswith("The first to third images are the ORIGINAL images (the edit's inputs, "
                                      "in order). The fourth image is the EDITED image.")
    # Visual quality is judged on the edit alone.
    quality = [r for r in rows if r["criterion"] == "visual_quality"]
    assert len(quality) == 3 and all(r["images"] == [EDIT] for r in quality)
    assert all(r["text"].startswith("The first image is the EDITED image.") for r in quality)


def write_rise_views(directory: Path) -> tuple[Path, Path]:
    """RISEBench items with a reference answer, a reference image and a reference text; their
    edits in RISE's scorer layout."""
    data, edits = directory / "data", directory / "outputs"
    items = [
        {"index": "temporal_reasoning_1", "category": "temporal_reasoning", "subtask": "Melting",
         "instruction": "Show the ice after an hour in the sun.", "image": "temporal_reasoning_images/1.png",
         "reference": "A puddle of water."},
        {"index": "logical_reasoning_1", "category": "logical_reasoning", "subtask": "Maze",
         "instruction": "Draw the path through the maze.", "image": "logical_reasoning_images/1.png",
         "reference_img": "logical_reasoning_images/1_ref.png"},
        {"index": "logical_reasoning_2", "category": "logical_reasoning", "subtask": "Sudoku",
         "instruction": "Solve the sudoku.", "image": "logical_reasoning_images/2.png", "reference_txt": "1 2 3"},
    ]
    for item in items:
        _image(data / item["image"], "white")
        _image(edits / "images" / item["category"] / f"{item['index']}.png", EDIT)
    _image(data / "logical_reasoning_images" / "1_ref.png", "yellow")
    path = data / "data_total.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    return path, edits


def test_rise_reference_answer_and_image_reach_the_criteria_rise_gives_them(fleet, tmp_path) -> None:
    bench, edits = write_rise_views(tmp_path)
    proc, report, rows = _judged(fleet, tmp_path, bench, edits, "--rubric", "rise")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["overall"]["n"] == 3 and report["failures"] == []
    # Reasoning: the reference answer in words and the edit alone ...
    row = _row(rows, "reasoning", "Show the ice after an hour in the sun.")
    assert row["images"] == [EDIT] and "The expected result: A puddle of water." in row["text"]
    assert row["text"].startswith("The first image is the EDITED image.")
    # ... or the reference image, then the edit.
    row = _row(rows, "reasoning", "Draw the path through the maze.")
    assert row["images"] == ["yellow", EDIT] and "The expected" not in row["text"]
    assert row["text"].startswith("The first image is the REFERENCE image (the expected result). "
                                  "The second image is the EDITED image.")
    # A logical item's reference text goes to consistency and reasoning, as RISE's prompts have it.
    for criterion, images in (("consistency", ["white", EDIT]), ("reasoning", [EDIT])):
        row = _row(rows, criterion, "Solve the sudoku.")
        assert row["images"] == images and "The expected answer: 1 2 3" in row["text"]
    assert _row(rows, "consistency", "Show the ice after an hour in the sun.")["images"] == ["white", EDIT]
    [plausibility] = [r for r in rows if r["criterion"] == "plausibility"]  # not in logical_reasoning
    assert plausibility["images"] == [EDIT]


@pytest.mark.parametrize("rubric", ["kris", "rise"])
def test_the_rubrics_score_a_benchmark_whose_records_have_none_of_those_fields(fleet, tmp_path, rubric) -> None:
    benchmark = one_pair_benchmark(tmp_path / "sample")
    [(category, [pair])] = read_json(benchmark).items()
    _image(tmp_path / "edits" / f"{pair['pair_id']}.png", EDIT)
    proc, report, rows = _judged(fleet, tmp_path, benchmark, tmp_path / "edits", "--rubric", rubric)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["overall"]["n"] == 1 and report["overall"]["mean"] == 5.0
    # kris: no knowledge plausibility outside its categories; rise: no plausibility outside its three.
    assert len(rows) == {"kris": 3, "rise": 2}[rubric]
    assert all("The expected" not in r["text"] and "Explanation" not in r["text"] for r in rows)
    assert all(r["images"][-1] == EDIT for r in rows)


def test_a_placeholder_no_record_has_and_the_rubric_does_not_declare_is_refused(fleet, tmp_path) -> None:
    prompts = tmp_path / "prompts"
    shutil.copytree(ROOT / "config" / "prompts", prompts)
    rubric = prompts / "rubrics" / "rise" / "rubric.json"
    data = json.loads(rubric.read_text(encoding="utf-8"))
    del data["fields"]  # {reference} and {reference_txt} no longer declared optional
    rubric.write_text(json.dumps(data), encoding="utf-8")
    env, _ = fleet
    proc = run_producer("run", "editbench", "--benchmark", str(one_pair_benchmark(tmp_path / "sample")),
                        "--rubric", "rise", env={**env, "EVALFLEET_PROMPTS_DIR": str(prompts)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "judge template rubrics/rise/consistency/default.user.txt: placeholder {reference_txt}" in proc.stderr


def test_rows_of_several_images_score_through_the_tiny_local_judge(vlm) -> None:
    frames = [Image.new("RGB", (64, 48), colour) for colour in ("red", "lime", "blue")]
    edited, truth = Image.new("RGB", (64, 48), "black"), Image.new("RGB", (64, 48), "yellow")
    labelled = [JudgeImage("ORIGINAL images", frame) for frame in frames]
    rows = [JudgeItem([*labelled, JudgeImage("EDITED image", edited)], "You judge edits.",
                      "The first to third images are the ORIGINAL images. The fourth image is the EDITED image. "
                      "Answer with a score from 1 to 5."),
            JudgeItem([JudgeImage("EDITED image", edited)], "You judge edits.",
                      "The first image is the EDITED image. Answer with a score from 1 to 5."),
            JudgeItem([JudgeImage("ORIGINAL image", frames[0]), JudgeImage("EDITED image", edited),
                       JudgeImage("GROUND-TRUTH image", truth)], "You judge edits.",
                      "The third image is the GROUND-TRUTH image. Answer with a score from 1 to 5.")]
    judge = Judge(*vlm, batch_size=3, values=(1, 2, 3, 4, 5))
    together = judge.score(rows)
    assert all(1 <= s.score <= 5 and sum(s.probabilities.values()) == pytest.approx(1) for s in together)
    alone = [Judge(*vlm, batch_size=1, values=(1, 2, 3, 4, 5)).score([row])[0] for row in rows]
    assert [s.score for s in together] == pytest.approx([s.score for s in alone], abs=1e-4)
