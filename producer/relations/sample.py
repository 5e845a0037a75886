"""A small Visual-Genome-style sample for the relations job, generated deterministically.

Five images with drawn objects, the input file (``sample_images.json``, image ids as
integers, one as a string) and a stage-1 file (``recall_results_sample.json``, ids as
object keys, hence strings) with realistic candidates: "no relation" candidates, a
pair with more candidates than the default top-K, and one pair that is all
"no relation" (dropped). Same bytes every time, so the same run id every time.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from shared.artifacts import write_atomic

STAGE1_NAME = "recall_results_sample.json"
INPUT_NAME = "sample_images.json"

PREDICATES = ["on", "near", "has", "holding", "wearing", "behind", "under", "in front of",
              "next to", "above", "beside", "part of", "attached to", "in"]


@dataclass(frozen=True)
class SampleImage:
    image_id: int
    size: tuple[int, int]
    # class name -> (bbox, fill colour)
    objects: dict[str, tuple[tuple[int, int, int, int], str]]
    # (subject, object, ground-truth predicates, number of stage-1 candidates)
    pairs: list[tuple[str, str, list[str], int]]


SAMPLE = [
    SampleImage(2343729, (400, 300),
                {"train": ((20, 60, 380, 250), "firebrick"), "windshield": ((300, 90, 370, 150), "lightblue"),
                 "track": ((0, 250, 400, 300), "dimgray")},
                [("windshield", "train", ["on"], 12), ("train", "track", ["on"], 5),
                 ("track", "windshield", [], 2)]),
    SampleImage(2343730, (320, 240),
                {"man": ((100, 30, 180, 230), "peru"), "hat": ((110, 10, 170, 45), "black"),
                 "umbrella": ((40, 0, 240, 60), "navy")},
                [("man", "hat", ["wearing"], 6), ("man", "umbrella", ["holding"], 4),
                 ("hat", "man", ["on"], 3)]),
    SampleImage(2343731, (256, 256),
                {"dog": ((30, 140, 150, 240), "saddlebrown"), "frisbee": ((150, 100, 200, 130), "orange"),
                 "grass": ((0, 200, 256, 256), "forestgreen")},
                [("dog", "grass", ["on"], 4), ("frisbee", "dog", [], 3)]),
    SampleImage(2343732, (480, 320),
                {"table": ((60, 180, 420, 300), "sienna"), "cup": ((150, 130, 200, 185), "white"),
                 "laptop": ((230, 100, 380, 185), "silver"), "lamp": ((400, 20, 460, 180), "gold")},
                [("cup", "table", ["on"], 5), ("laptop", "table", ["on"], 5), ("lamp", "laptop", [], 3)]),
    SampleImage(2343733, (300, 400),
                {"woman": ((90, 60, 210, 390), "plum"), "bag": ((60, 200, 110, 280), "maroon"),
                 "shirt": ((95, 120, 205, 240), "teal")},
                [("woman", "bag", ["holding"], 4), ("woman", "shirt", ["wearing"], 4)]),
]


def _draw(image: SampleImage) -> Image.Image:
    img = Image.new("RGB", image.size, "beige")
    draw = ImageDraw.Draw(img)
    for bbox, colour in image.objects.values():
        draw.rectangle(bbox, fill=colour, outline="black", width=2)
    return img


def _candidates(image: SampleImage, rng: random.Random) -> list[dict]:
    candidates = []
    for subject, object_, gt, count in image.pairs:
        predicates = gt + [p for p in PREDICATES if p not in gt]
        for i in range(count):
            # The true predicate ranks high; a "no relation" candidate sits in every longer list.
            predicate = "no relation" if i == 2 else predicates[i % len(predicates)]
            similarity = round(0.95 - 0.06 * i - rng.random() * 0.03, 4)
            candidates.append({"subject": subject, "object": object_,
                               "predicted_predicate": predicate, "similarity": similarity,
                               "has_gt": bool(gt), "gt_predicates": gt})
    # An all-"no relation" pair: preparation must drop it entirely.
    names = list(image.objects)
    candidates.append({"subject": names[-1], "object": names[0], "predicted_predicate": "no relation",
                       "similarity": 0.31, "has_gt": False, "gt_predicates": []})
    rng.shuffle(candidates)  # stage 1 does not sort by pair
    return candidates


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_relations_sample(directory: Path) -> tuple[Path, Path]:
    """Write the sample into ``directory``; returns (stage-1 file, input file)."""
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(2343729)
    records, stage1 = [], {}
    for image in SAMPLE:
        rel_path = f"images/{image.image_id}.png"
        write_atomic(directory / rel_path, _png(_draw(image)))
        # One input id as a string: ids must match whatever their type on either side.
        image_id: int | str = str(image.image_id) if image.image_id == 2343731 else image.image_id
        records.append({
            "image_id": image_id, "image_path": rel_path,
            "objects": [{"id": i + 1, "class_name": name, "bbox": list(bbox)}
                        for i, (name, (bbox, _)) in enumerate(image.objects.items())],
            "relations": [{"subject": s, "object": o, "predicate": gt[0]}
                          for s, o, gt, _ in image.pairs if gt],
        })
        stage1[str(image.image_id)] = _candidates(image, rng)
    stage1_path, input_path = directory / STAGE1_NAME, directory / INPUT_NAME
    # Atomic: a full disk leaves no half-written sample for the next run to read.
    write_atomic(stage1_path, json.dumps({"per_image_top100_candidates": stage1}, indent=1).encode())
    write_atomic(input_path, json.dumps(records, indent=1).encode())
    return stage1_path, input_path


def ensure_relations_sample(directory: Path) -> tuple[Path, Path]:
    """The sample's two files, written first if missing."""
    stage1_path, input_path = Path(directory) / STAGE1_NAME, Path(directory) / INPUT_NAME
    if stage1_path.exists() and input_path.exists():
        return stage1_path, input_path
    return write_relations_sample(directory)
