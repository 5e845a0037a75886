"""Small copies of the public editing benchmarks, laid out as each is published (a few items,
several categories), written by the tests: GEdit-Bench's parquet shards (both languages) and its
JSON-lines export, a KRIS-Bench folder (with a multi-image item), ImgEdit-Bench's id map with its
image folder, RISEBench's list with per-category image folders."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

# (task_type, key, English instruction, Chinese instruction, in the intersection subset)
GEDIT = [("background_change", "0a1b", "Make the sky purple", "把天空变成紫色", True),
         ("background_change", "0c2d", "Put the car on a beach", "把车放到海滩上", False),
         ("color_alter", "1e3f", "Paint the door red", "把门涂成红色", True),
         ("subject-add", "2a4b", "Add a cat on the sofa", "在沙发上加一只猫", False)]


def png(colour: str, width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


def gedit_rows() -> list[dict]:
    """GEdit-Bench's rows: each key in English then Chinese, the images inside the row."""
    rows = []
    for i, (task, key, en, cn, intersection) in enumerate(GEDIT):
        for language, instruction in (("en", en), ("cn", cn)):
            image = {"bytes": png(["red", "green", "blue", "gray"][i]), "path": f"{key}.png"}
            rows.append({"task_type": task, "key": key, "instruction": instruction,
                         "instruction_language": language, "input_image": image,
                         "input_image_raw": {"bytes": png("white", 128, 96), "path": f"{key}_raw.png"},
                         "Intersection_exist": intersection})
    return rows


def write_gedit_parquet(directory: Path) -> Path:
    """The dataset's folder as a download leaves it: data/train-0000N-of-00002.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("task_type", pa.string()), ("key", pa.string()), ("instruction", pa.string()),
                        ("instruction_language", pa.string()), ("input_image", image),
                        ("input_image_raw", image), ("Intersection_exist", pa.bool_())])
    rows = gedit_rows()
    (directory / "data").mkdir(parents=True)
    for shard, part in enumerate((rows[:4], rows[4:])):
        pq.write_table(pa.Table.from_pylist(part, schema=schema),
                       directory / "data" / f"train-{shard:05d}-of-00002.parquet")
    return directory


def write_gedit_jsonl(directory: Path) -> Path:
    """The JSON-lines export: the same rows, each image a file beside it."""
    (directory / "images").mkdir(parents=True)
    lines = []
    for row in gedit_rows():
        image = directory / "images" / f"{row['key']}_{row['instruction_language']}.png"
        image.write_bytes(row["input_image"]["bytes"])
        lines.append({**{k: v for k, v in row.items() if not k.startswith("input_image")},
                      "input_image": f"images/{image.name}"})
    path = directory / "gedit.jsonl"
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path


def write_kris(directory: Path) -> Path:
    """Two category folders; temporal_prediction's item 1 has three input frames."""
    categories = {
        "count_change": {"1": {"ori_img": "1.jpg", "ins_en": "Add two more apples.",
                               "explain_en": "There should be five apples."},
                         "2": {"ori_img": "2.png", "ins_en": "Remove one bird.",
                               "explain_en": "Two birds remain.", "gt_img": "2_gt.png"}},
        "temporal_prediction": {"1": {"ori_img": ["1-1.png", "1-2.png", "1-3.png"],
                                      "ins_en": "Draw frame 4 of the sequence.",
                                      "explain_en": "The ball reaches the ground."},
                                "2": {"ori_img": "2.png", "ins_en": "Show it ten years later.",
                                      "explain_en": "The tree is taller."}},
    }
    for category, items in categories.items():
        folder = directory / category
        folder.mkdir(parents=True)
        (folder / "annotation.json").write_text(json.dumps(items, indent=2), encoding="utf-8")
        for item in items.values():
            names = item["ori_img"] if isinstance(item["ori_img"], list) else [item["ori_img"]]
            for n, name in enumerate(names):
                fmt = "JPEG" if name.endswith(".jpg") else "PNG"
                buf = io.BytesIO()
                Image.new("RGB", (64, 48), ["orange", "navy", "olive"][n]).save(buf, format=fmt)
                (folder / name).write_bytes(buf.getvalue())
    return directory


def write_imgedit(directory: Path) -> Path:
    """basic_edit.json (id -> {id, prompt, edit_type}) and the archive's image folder."""
    items = {"1082": {"id": "animal/000342021.jpg", "prompt": "Change the shell to a smooth surface.",
                      "edit_type": "alter"},
             "673": {"id": "style/000278574.jpg", "prompt": "Make it an ukiyo-e print.", "edit_type": "style"},
             "97": {"id": "for_add/000236569.jpg", "prompt": "Add a chandelier.", "edit_type": "add"},
             "667": {"id": "style/000278574.jpg", "prompt": "Make it a sepia photograph.", "edit_type": "style"}}
    for item in items.values():
        image = directory / "singleturn" / item["id"]
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), "teal").save(image, format="JPEG")
    path = directory / "basic_edit.json"
    path.write_text(json.dumps(items, indent=4), encoding="utf-8")
    return path


def write_rise(directory: Path) -> Path:
    """data/data_total.json with images in per-category folders; spatial_reasoning_2 has two."""
    items = [
        {"index": "temporal_reasoning_1", "category": "temporal_reasoning", "subtask": "Life Progression",
         "instruction": "Show this child 30 years later.", "image": "temporal_reasoning_images/1.png",
         "reference": "An adult with the same features."},
        {"index": "causal_reasoning_1", "category": "causal_reasoning", "subtask": "State Transition",
         "instruction": "Show the ice after an hour in the sun.", "image": "causal_reasoning_images/1.png",
         "reference": "A puddle of water."},
        {"index": "spatial_reasoning_2", "category": "spatial_reasoning", "subtask": "Component Assembly",
         "instruction": "Assemble the parts.", "image": ["spatial_reasoning_images/2_1.png",
                                                         "spatial_reasoning_images/2_2.png"],
         "reference": "A chair."},
        {"index": "logical_reasoning_1", "category": "logical_reasoning", "subtask": "Puzzle Solving",
         "instruction": "Solve the sudoku.", "image": "logical_reasoning_images/1.png",
         "reference_txt": "1 2 3"},
    ]
    data = directory / "data"
    for item in items:
        for name in item["image"] if isinstance(item["image"], list) else [item["image"]]:
            (data / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 48), "maroon").save(data / name, format="PNG")
    path = data / "data_total.json"
    path.write_text(json.dumps(items, indent=2), encoding="utf-8")
    return path
