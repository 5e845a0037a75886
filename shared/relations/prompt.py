"""The stage-2 relation prompt (README, Relations formats), byte for byte, with normalized boxes."""

from __future__ import annotations

from typing import Mapping, Sequence

# One line: the original's line breaks were for display only.
RELATION_PROMPT = (
    "这是一张图，物体<|object_ref_start|>{subject_name}<|object_ref_end|>和"
    "<|object_ref_start|>{object_name}<|object_ref_end|>在位置({subj_center_x}, {subj_center_y})"
    "和({obj_center_x}, {obj_center_y})，<|object_ref_start|>{subject_name}<|object_ref_end|>位于"
    "<|box_start|>({subject_bbox_str})<|box_end|>，<|object_ref_start|>{object_name}<|object_ref_end|>"
    "位于<|box_start|>({object_bbox_str})<|box_end|>，{subject_name} is roughly {top_predicate} "
    "{object_name}，请给出{subject_name}和{object_name}细节的相对关系"
)

# Normalized coordinates live in [0, NORM): the image's own width and height map to 1000.
NORM = 1000


class BoxOutsideImage(ValueError):
    """A bounding box does not lie inside the image it belongs to."""


def _scale(value: float, size: int) -> int:
    # Truncate, and keep the right/bottom edge (value == size) inside [0, 1000).
    return min(int(value * NORM / size), NORM - 1)


def normalize_bbox(bbox: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = bbox
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise BoxOutsideImage(f"bbox {list(bbox)} lies outside the {width}x{height} image")
    return _scale(x1, width), _scale(y1, height), _scale(x2, width), _scale(y2, height)


def normalized_center(bbox: Sequence[float], width: int, height: int) -> tuple[int, int]:
    x1, y1, x2, y2 = bbox
    return _scale((x1 + x2) / 2, width), _scale((y1 + y2) / 2, height)


def build_relation_prompt(
    subject_obj: Mapping, object_obj: Mapping, top_predicate: str, width: int, height: int
) -> str:
    """The prompt for one (subject, object, predicate) of an image of the given size."""
    sx, sy = normalized_center(subject_obj["bbox"], width, height)
    ox, oy = normalized_center(object_obj["bbox"], width, height)
    return RELATION_PROMPT.format(
        subject_name=subject_obj["class_name"],
        object_name=object_obj["class_name"],
        subj_center_x=sx,
        subj_center_y=sy,
        obj_center_x=ox,
        obj_center_y=oy,
        subject_bbox_str=", ".join(map(str, normalize_bbox(subject_obj["bbox"], width, height))),
        object_bbox_str=", ".join(map(str, normalize_bbox(object_obj["bbox"], width, height))),
        top_predicate=top_predicate,
    )
