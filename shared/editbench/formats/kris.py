"""KRIS-Bench: a folder per category holding ``annotation.json`` (an id mapped to ``{ori_img,
ins_en, explain_en, gt_img?}``, ``ori_img`` a file name or a list of them) and the images
beside it. A pair is one id of one category folder; every category folder found is read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared import storage
from shared.editbench.formats.fields import FOLDER_SOURCE, KEY_SOURCE

NAME = "kris"
DESCRIPTION = ("KRIS-Bench: a folder of <category>/annotation.json ({\"<id>\": {\"ori_img\", \"ins_en\", "
               "\"explain_en\", ...}}) with the images beside each")
ANNOTATION = "annotation.json"
MAPPING = {"category": FOLDER_SOURCE, "pair_id": KEY_SOURCE, "edit_instruction": "ins_en",
           "original_image_path": "ori_img"}


def annotation_files(path: str | Path) -> list[str | Path]:
    """The category folders' annotation files: ``path`` itself, or those one level under it
    (local, or objects of a store's folder)."""
    if not storage.is_folder(path):
        return [path]
    if storage.is_url(path):
        folder = str(path).rstrip("/") + "/"
        return [url for url in storage.list_under(path)  # <folder><category>/annotation.json
                if url.removeprefix(folder).count("/") == 1 and storage.name(url) == ANNOTATION]
    return sorted(p for p in Path(path).glob(f"*/{ANNOTATION}") if p.is_file())


def matches(data: Any) -> bool:
    return (isinstance(data, dict) and bool(data) and all(isinstance(v, dict) for v in data.values())
            and all(k in next(iter(data.values())) for k in ("ori_img", "ins_en")))
