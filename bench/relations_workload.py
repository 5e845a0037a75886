"""Drawn relations workloads: images with boxes, and stage-1 candidates shaped like Visual Genome's.

Image ``i`` gets ``pair_counts[i]`` subject-object pairs of 12 candidates each (one of them
"no relation"), so top-10 keeps 10 descriptions a pair.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

NAMES = ["man", "horse", "hat", "fence", "tree", "dog", "car", "kite", "bench", "cup", "lamp", "boat"]
FULL_SIZE = (1280, 960)
CHUNK_PAIRS = 16  # the product default: one task carries at most 16 pairs of one image


def image_size(tiny: bool) -> tuple[int, int]:
    # The tiny processor caps an image at 192x192 pixels anyway: small files keep a CPU run quick.
    return (320, 240) if tiny else FULL_SIZE


def write_workload(directory: Path, pair_counts: list[int], size: tuple[int, int] = FULL_SIZE,
                   seed: int = 7) -> tuple[Path, Path]:
    """Image ``i`` with ``pair_counts[i]`` pairs (at least 6 objects, more when an image needs more
    than 30 pairs). Boxes are drawn for 1280x960 and scaled to ``size``. Returns (stage-1 file,
    input file)."""
    rng = random.Random(seed)
    sx, sy = size[0] / FULL_SIZE[0], size[1] / FULL_SIZE[1]
    (directory / "images").mkdir(parents=True, exist_ok=True)
    records, stage1 = [], {}
    for i, pairs_per_image in enumerate(pair_counts):
        names = _object_names(pairs_per_image)
        img = Image.new("RGB", size, "beige")
        draw = ImageDraw.Draw(img)
        objects = []
        for j, name in enumerate(names):
            x, y = rng.randrange(0, 1000), rng.randrange(0, 700)
            box = [x, y, x + rng.randrange(60, 280), y + rng.randrange(60, 260)]
            bbox = [round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)]
            draw.rectangle(bbox, fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
            objects.append({"id": j + 1, "class_name": name, "bbox": bbox})
        img.save(directory / "images" / f"{i}.png")
        records.append({"image_id": i, "image_path": f"images/{i}.png", "objects": objects})
        pairs = [(a, b) for a in names for b in names if a != b][:pairs_per_image]
        stage1[str(i)] = [
            {"subject": a, "object": b, "similarity": round(0.95 - 0.05 * k - rng.random() * 0.01, 4),
             "predicted_predicate": "no relation" if k == 5 else f"pred{k}", "has_gt": k == 0,
             "gt_predicates": ["pred0"]}
            for a, b in pairs for k in range(12)]
    (directory / "input.json").write_text(json.dumps(records))
    (directory / "stage1.json").write_text(json.dumps({"per_image_top100_candidates": stage1}))
    return directory / "stage1.json", directory / "input.json"


def _object_names(pairs: int) -> list[str]:
    """Six objects, or the fewest of NAMES with ``pairs`` ordered pairs."""
    return NAMES[:max(6, next(n for n in range(2, len(NAMES) + 1) if n * (n - 1) >= pairs))]


def dense_workload(directory: Path, images: int = 4, pairs_per_image: int = 8) -> tuple[Path, Path, Path]:
    """Visual-Genome-like density: 1280x960 images of 6 objects and ``pairs_per_image`` pairs each;
    plus a warm-up stage-1 file (three candidates of the first image)."""
    stage1, input_path = write_workload(directory, [pairs_per_image] * images)
    candidates = json.loads(stage1.read_text())["per_image_top100_candidates"]
    warm = directory / "stage1_warmup.json"
    warm.write_text(json.dumps({"per_image_top100_candidates": {"0": candidates["0"][:3]}}))
    return stage1, input_path, warm


def skewed_pair_counts(big_images: int = 3, big_pairs: int = 20, small_images: int = 40,
                       small_pairs: int = 1) -> list[int]:
    """Pairs per image, a few big images among many small ones, in a shuffled (fixed-seed) order:
    the workload a static split of the pairs balances worst."""
    counts = [big_pairs] * big_images + [small_pairs] * small_images
    random.Random(11).shuffle(counts)
    return counts
