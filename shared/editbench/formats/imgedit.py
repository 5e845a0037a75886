"""ImgEdit-Bench's basic set: ``basic_edit.json`` maps an id to ``{id, prompt, edit_type}``,
``id`` the image's path under the folder of original images (``animal/000342021.jpg``) as the
benchmark's archive lays it out (``--images DIR``; default: the JSON file's folder). A pair is
one id; its category the edit type."""

from __future__ import annotations

from typing import Any

from shared.editbench.formats.fields import KEY_SOURCE

NAME = "imgedit"
DESCRIPTION = ('ImgEdit-Bench: {"<id>": {"id": "<image path>", "prompt": ..., "edit_type": ...}}, '
               "images under --images DIR (default: the file's folder)")
MAPPING = {"category": "edit_type", "pair_id": KEY_SOURCE, "edit_instruction": "prompt",
           "original_image_path": "id"}


def matches(data: Any) -> bool:
    return (isinstance(data, dict) and bool(data) and all(isinstance(v, dict) for v in data.values())
            and all(k in next(iter(data.values())) for k in ("id", "prompt", "edit_type")))
