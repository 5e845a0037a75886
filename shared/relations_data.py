"""Job B's input preparation (SPEC.md, ``prepare_data_for_inference``).

Stage-1 candidates are matched to their input image by id (string or integer),
grouped by (subject, object), stripped of "no relation", sorted by similarity and
cut to the top K. A bad record becomes a failure with a reason naming the file,
the record and the field; the other records go on.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import InputFileError, RecordError
from shared.jsonio import read_json
from shared.keys import normalize_image_id, relation_key

log = logging.getLogger(__name__)

CANDIDATES_KEY = "per_image_top100_candidates"
NO_RELATION = "no relation"


@dataclass
class PreparedRelations:
    """Pairs to generate, in input order, and the records that could not be used."""

    pairs: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # item key -> reason


def load_relations_inputs(stage1_path: Path, input_path: Path) -> tuple[dict, list]:
    """Read both files; a file that is unusable as a whole raises InputFileError."""
    stage1 = read_json(stage1_path)
    if not isinstance(stage1, dict) or not isinstance(stage1.get(CANDIDATES_KEY), dict):
        raise InputFileError(
            stage1_path, f"expected a JSON object with an object under {CANDIDATES_KEY!r}"
        )
    images = read_json(input_path)
    if not isinstance(images, list):
        raise InputFileError(input_path, "expected a JSON list of image records")
    return stage1[CANDIDATES_KEY], images


def prepare_data_for_inference(
    stage1_path: Path, input_path: Path, top_k: int
) -> PreparedRelations:
    candidates_by_image, images = load_relations_inputs(stage1_path, input_path)
    records = _index_images(images, input_path)
    prepared = PreparedRelations()
    for raw_id, candidates in candidates_by_image.items():
        record_name = f"{CANDIDATES_KEY}[{raw_id!r}]"
        try:
            image_id = normalize_image_id(raw_id)
            groups = _group_candidates(candidates, stage1_path, record_name)
        except (TypeError, RecordError) as exc:
            prepared.failures[relation_key(raw_id, "*", "*")] = str(exc)
            continue
        for (subject, object_), group in groups.items():
            key = relation_key(image_id, subject, object_)
            try:
                record = records.get(image_id)
                if record is None:
                    raise RecordError(stage1_path, record_name, "image_id",
                                      f"image {raw_id} is not in {input_path}")
                if isinstance(record, RecordError):
                    raise record
                pair = _pair_data(record, subject, object_, group, top_k, input_path)
            except RecordError as exc:
                prepared.failures[key] = str(exc)
                continue
            pair["order"] = len(prepared.pairs)
            prepared.pairs.append(pair)
    return prepared


def _index_images(images: list, input_path: Path) -> dict[str, dict | RecordError]:
    """image id (normalized) -> valid record, or the RecordError that makes it unusable."""
    records: dict[str, Any] = {}
    for i, record in enumerate(images):
        name = f"[{i}]"
        if not isinstance(record, dict) or "image_id" not in record:
            log.warning("%s: record %s has no image_id; skipped", input_path, name)
            continue
        try:
            image_id = normalize_image_id(record["image_id"])
        except TypeError as exc:
            log.warning("%s: record %s: %s; skipped", input_path, name, exc)
            continue
        if image_id in records:
            log.warning("%s: record %s repeats image_id %s; the first one is used",
                        input_path, name, image_id)
            continue
        try:
            records[image_id] = _checked_image_record(record, input_path, f"{name} (image_id {image_id})")
        except RecordError as exc:
            records[image_id] = exc
    return records


def _checked_image_record(record: dict, path: Path, name: str) -> dict:
    image_path = record.get("image_path")
    if not isinstance(image_path, str) or not image_path:
        raise RecordError(path, name, "image_path", "expected a non-empty string")
    objects = record.get("objects")
    if not isinstance(objects, list):
        raise RecordError(path, name, "objects", "expected a list of objects")
    by_name: dict[str, dict] = {}
    for j, obj in enumerate(objects):
        where = f"objects[{j}]"
        if not isinstance(obj, dict) or not isinstance(obj.get("class_name"), str):
            raise RecordError(path, name, f"{where}.class_name", "expected a string")
        _check_bbox(obj.get("bbox"), path, name, f"{where}.bbox")
        # The first object of a class name stands for it, as the stage-1 file names classes only.
        by_name.setdefault(obj["class_name"], obj)
    resolved = Path(image_path)
    if not resolved.is_absolute():
        resolved = Path(path).resolve().parent / resolved
    return {"image_id": record["image_id"], "image_path": str(resolved), "objects": by_name}


def _check_bbox(bbox: object, path: Path, name: str, where: str) -> None:
    if (
        not isinstance(bbox, list)
        or len(bbox) != 4
        or not all(_is_number(v) for v in bbox)
    ):
        raise RecordError(path, name, where, f"expected [x1, y1, x2, y2] numbers, got {bbox!r}")
    x1, y1, x2, y2 = bbox
    if x2 <= x1 or y2 <= y1:
        raise RecordError(path, name, where, f"box {bbox} is inverted or has zero area")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _group_candidates(candidates: object, path: Path, name: str) -> dict[tuple[str, str], list]:
    """(subject, object) -> its candidates, first-seen order; "no relation" dropped."""
    if not isinstance(candidates, list):
        raise RecordError(path, name, "candidates", "expected a list of candidates")
    groups: dict[tuple[str, str], list] = {}
    for i, cand in enumerate(candidates):
        where = f"{name}[{i}]"
        if not isinstance(cand, dict):
            raise RecordError(path, where, "candidate", "expected an object")
        for fld in ("subject", "object", "predicted_predicate"):
            if not isinstance(cand.get(fld), str) or not cand[fld].strip():
                raise RecordError(path, where, fld, "expected a non-empty string")
        if not _is_number(cand.get("similarity")):
            raise RecordError(path, where, "similarity",
                              f"expected a finite number, got {cand.get('similarity')!r}")
        if cand["predicted_predicate"].strip().lower() == NO_RELATION:
            continue
        groups.setdefault((cand["subject"], cand["object"]), []).append(cand)
    return groups


def _pair_data(record: dict, subject: str, object_: str, group: list, top_k: int,
               input_path: Path) -> dict[str, Any]:
    name = f"image_id {record['image_id']}"
    objects = record["objects"]
    for role, class_name in (("subject", subject), ("object", object_)):
        if class_name not in objects:
            raise RecordError(input_path, name, "objects",
                              f"{role} {class_name!r} is not among the image's objects")
    ranked = sorted(group, key=lambda c: c["similarity"], reverse=True)[:top_k]
    gt_predicates: list[str] = []
    for cand in group:
        for predicate in cand.get("gt_predicates") or []:
            if predicate not in gt_predicates:
                gt_predicates.append(predicate)
    return {
        "image_id": record["image_id"],
        "image_path": record["image_path"],
        "subject": subject,
        "object": object_,
        "subject_obj": objects[subject],
        "object_obj": objects[object_],
        "stage1_top_k": [
            {"predicate": c["predicted_predicate"], "similarity": c["similarity"]} for c in ranked
        ],
        "has_gt": any(bool(c.get("has_gt")) for c in group),
        "gt_predicates": gt_predicates,
    }
