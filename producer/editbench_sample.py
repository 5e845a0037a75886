"""A small editbench benchmark: the five reference categories, three pairs each, drawn images.

Deterministic bytes, so the same run id every time.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image, ImageDraw

BENCHMARK_NAME = "editbench_sample.json"

# category -> [(description, instruction, shape, colour)]
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


def _image_b64(shape: str, colour: str, index: int) -> str:
    img = Image.new("RGB", (96 + 16 * index, 96), "beige")
    draw = ImageDraw.Draw(img)
    getattr(draw, shape)((20, 20, 76, 76), fill=colour, outline="black", width=2)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_editbench_sample(directory: Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    benchmark = {
        category: [{"pair_id": f"{category}-{i + 1}", "original_image_b64": _image_b64(shape, colour, i),
                    "original_description": description, "edit_instruction": instruction}
                   for i, (description, instruction, shape, colour) in enumerate(pairs)]
        for category, pairs in SAMPLE.items()
    }
    path = directory / BENCHMARK_NAME
    path.write_text(json.dumps(benchmark, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def ensure_editbench_sample(directory: Path) -> Path:
    path = Path(directory) / BENCHMARK_NAME
    return path if path.exists() else write_editbench_sample(directory)
