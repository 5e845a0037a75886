"""GEdit-Bench (the Step1X-Edit project's Hugging Face dataset): parquet or arrow shards of
rows ``task_type, key, instruction, instruction_language (en/cn), input_image,
input_image_raw, Intersection_exist``, the images inside the file; or a JSON-lines export of
those rows with ``input_image`` a file path. A pair is one key in one language."""

from __future__ import annotations

from typing import Any

NAME = "gedit"
DESCRIPTION = ("GEdit-Bench: parquet/arrow shards (a file or the dataset's folder) or JSON lines of "
               "task_type, key, instruction, instruction_language, input_image, Intersection_exist")
COLUMNS = ("task_type", "key", "instruction", "instruction_language", "input_image")
MAPPING = {"category": "task_type", "pair_id": "instruction_language/key", "edit_instruction": "instruction",
           "original_image_path": "input_image"}


def matches(first: Any) -> bool:
    return isinstance(first, dict) and all(column in first for column in COLUMNS)


def matches_columns(columns: list[str]) -> bool:
    return all(column in columns for column in COLUMNS)
