"""A small editbench benchmark: the five reference categories, three pairs each, drawn images.

Deterministic bytes, so the same run id every time.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image, ImageDraw

from shared.artifacts import write_atomic
from shared.editbench.data import SHAPES

BENCHMARK_NAME = "editbench_sample.json"
SAMPLE_NAMES = {"category-map": BENCHMARK_NAME, "categories-key": "editbench_sample.categories.json",
                "category-list": "editbench_sample.list.json", "json-lines": "editbench_sample.jsonl"}

# category -> [(description, instruction, figure drawn, colour)]
SAMPLE = {
    "物理": [("一个红色的球放在桌子上", "让球从桌子边缘滚落", "ellipse", "red"),
             ("A glass of ice water in the sun", "Show the glass an hour later", "rectangle", "lightblue"),
             ("一根蜡烛在燃烧", "蜡烛燃烧两小时后的样子", "rectangle", "ivory")],
    "环境": [("A green tree in summer", "Show the same tree in winter", "ellipse", "green"),
             ("晴朗的湖面", "把天气改成暴风雨", "rectangle", "deepskyblue"),
             ("A street at noon", "Make it midnight", "rectangle", "gray")],
    "社会": [("一个空的教室", "上课时间的教室", "rectangle", "wheat"),
             ("A traffic light showing red", "What do cars do next?", "ellipse", "red"),
             ("生日蛋糕上插着蜡烛", "唱完生日歌之后", "ellipse", "pink")],
    "因果": [("A full glass near a table edge", "The cat knocks it over", "rectangle", "orange"),
             ("一块冰放在热锅上", "十分钟后", "rectangle", "white"),
             ("A seed planted in soil", "After a month of rain", "ellipse", "saddlebrown")],
    "指代": [("左边是一个蓝色方块，右边是一个黄色圆", "把左边的物体变成绿色", "rectangle", "blue"),
             ("Two cups, the larger one is empty", "Fill the larger cup with coffee", "ellipse", "white"),
             ("三本书叠在一起", "拿走中间那本", "rectangle", "maroon")],
}


def _image_b64(figure: str, colour: str, index: int) -> str:
    img = Image.new("RGB", (96 + 16 * index, 96), "beige")
    draw = ImageDraw.Draw(img)
    getattr(draw, figure)((20, 20, 76, 76), fill=colour, outline="black", width=2)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_editbench_sample(directory: Path, shape: str = "category-map", image_files: bool = False) -> Path:
    """Write the sample benchmark in one of the reader's SHAPES; with ``image_files`` the images
    are PNG files under ``images/``, named by ``original_image_path`` (relative to the benchmark)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown benchmark shape {shape!r}: use one of {', '.join(SHAPES)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    benchmark = {
        category: [{"pair_id": f"{category}-{i + 1}",
                    **_image_field(directory, category, i, figure, colour, image_files),
                    "original_description": description, "edit_instruction": instruction}
                   for i, (description, instruction, figure, colour) in enumerate(pairs)]
        for category, pairs in SAMPLE.items()
    }
    path = directory / SAMPLE_NAMES[shape]
    # Atomic: a full disk leaves no half-written sample for the next run to read.
    write_atomic(path, _in_shape(benchmark, shape).encode("utf-8"))
    return path


def _image_field(directory: Path, category: str, index: int, figure: str, colour: str,
                 image_files: bool) -> dict[str, str]:
    encoded = _image_b64(figure, colour, index)
    if not image_files:
        return {"original_image_b64": encoded}
    relative = Path("images") / f"{category}-{index + 1}.png"
    (directory / relative).parent.mkdir(exist_ok=True)
    write_atomic(directory / relative, base64.b64decode(encoded))
    return {"original_image_path": relative.as_posix()}


def _in_shape(benchmark: dict[str, list[dict]], shape: str) -> str:
    if shape == "json-lines":
        return "".join(json.dumps({"category": category, **pair}, ensure_ascii=False) + "\n"
                       for category, pairs in benchmark.items() for pair in pairs)
    data: object = {
        "category-map": benchmark,
        "categories-key": {"name": "evalfleet sample", "version": 1, "categories": benchmark},
        "category-list": [{"category_name": c, "data_pairs": pairs} for c, pairs in benchmark.items()],
    }[shape]
    return json.dumps(data, ensure_ascii=False, indent=1)


def ensure_editbench_sample(directory: Path) -> Path:
    path = Path(directory) / BENCHMARK_NAME
    return path if path.exists() else write_editbench_sample(directory)
