"""RISEBench: ``data_total.json``, a list of ``{index, category, subtask, instruction, image,
reference, ...}``, ``image`` a path (or a list of paths) under the data folder beside the file
(``temporal_reasoning_images/1.png``). A pair is one index."""

from __future__ import annotations

from typing import Any

NAME = "rise"
DESCRIPTION = ('RISEBench: [{"index", "category", "subtask", "instruction", "image", "reference", ...}], '
               "images relative to the file's folder")
MAPPING = {"category": "category", "pair_id": "index", "edit_instruction": "instruction",
           "original_image_path": "image"}


def matches(data: Any) -> bool:
    return (isinstance(data, list) and bool(data) and isinstance(data[0], dict)
            and all(k in data[0] for k in ("index", "category", "instruction", "image")))
