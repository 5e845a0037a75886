"""The relations job's input preparation (stage-1 candidates + input images -> pairs).

Stage-1 candidates are matched to their input image by id (string or integer),
grouped by (subject, object) (class names compared in Unicode NFC), stripped of "no
relation" in any spelling (``No_Relation``, ``no-relation``), each predicate kept once (its
candidate of highest similarity), sorted by similarity and cut to the top K. A bad record becomes a failure with a reason naming the file,
the record and the field; the other records go on. What counts as bad:

- a stage-1 image entry: an empty or repeated id (``"042"`` repeats ``42``), a
  candidate without usable subject/object/predicate or with a similarity that is not
  a finite number (NaN, a string): the whole entry fails, as its top K would be wrong;
- an input image record: no usable ``image_id`` (listed as ``input[i]|*|*``), a bad
  ``image_path`` (empty, too long, outside the data root), ``objects`` not a list,
  an object without a class name: all pairs of that image fail;
- an object with a bad box (outside numbers, inverted, zero area), or a class name
  that several objects share (objects are matched by class name: with two "man" objects
  the pair is ambiguous): only the pairs that use that class name fail.
"""

from __future__ import annotations

import logging
import math
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import storage
from shared.errors import InputFileError, RecordError, shown
from shared.images import checked_data_root, checked_input_path
from shared.jsonio import invalid_number_at, read_json
from shared.keys import (KEY_SEP, NAME_MAX, is_key_part, location_digest, nfc, normalize_image_id,
                         relation_key, separate_failure_keys)
from shared.model_text import special_token_problem
from shared.redaction import without_password

log = logging.getLogger(__name__)

CANDIDATES_KEY = "per_image_top100_candidates"
NO_RELATION = "no relation"


@dataclass
class PreparedRelations:
    """Pairs to generate, in input order, and the records that could not be used."""

    pairs: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # item key -> reason
    # The sha256 of the stage-1 file and of the input file, of the very bytes read (a file or an object).
    input_digests: list[str] = field(default_factory=list)
    # Candidates left out of the pairs' top K: "no relation" in any spelling, and predicates
    # repeated in a pair's candidates (the one of highest similarity is kept).
    dropped_no_relation: int = 0
    merged_repeats: int = 0

    def image_digests(self) -> dict[str, str]:
        """The pairs' images (files or objects), each once, in order, with the sha256 of their
        content, each read once here: part of the run's content (another image is another run).
        One that is not a regular file or no object now is left out: its pairs fail on the
        worker, and the image, once there, makes another run."""
        digests = {}
        for location in dict.fromkeys(p["image_path"] for p in self.pairs):
            if storage.is_url(location):
                try:
                    digests[location] = location_digest(location)
                except storage.ObjectMissing as exc:
                    log.warning("%s", exc)
            elif os.path.isfile(location):
                digests[location] = location_digest(location)
        return digests


@dataclass(frozen=True)
class ObjectEntry:
    """One object of an input image, with where it is and what is wrong with it (if anything)."""

    index: int
    obj: dict
    error: RecordError | None = None


def load_relations_inputs(stage1_path: str | Path, input_path: str | Path) -> tuple[dict, list]:
    """Read both files (or objects); a file that is unusable as a whole raises InputFileError, an
    object that cannot be read a StorageError naming its URL."""
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
    stage1_path: str | Path, input_path: str | Path, top_k: int, data_root: str | Path = ""
) -> PreparedRelations:
    """The prepared pairs (``pair_data``: image, subject and object records, top K); ``data_root``
    (if set) confines image paths. Either file may be an object by URL; relative image paths
    resolve against the input file's own location."""
    root = checked_data_root(data_root)
    with storage.reads_held():  # the digests are of the bytes the pairs come from
        candidates_by_image, images = load_relations_inputs(stage1_path, input_path)
        prepared = PreparedRelations(input_digests=[location_digest(stage1_path), location_digest(input_path)])
    records = _index_images(images, input_path, root, prepared.failures)
    seen: dict[str, str] = {}  # normalized id -> the stage-1 key that had it first
    for raw_id, candidates in candidates_by_image.items():
        record_name = f"{CANDIDATES_KEY}[{shown(raw_id)}]"
        try:
            image_id = _stage1_image_id(raw_id, seen, stage1_path, record_name)
            groups, dropped = _group_candidates(candidates, stage1_path, record_name)
        except RecordError as exc:
            prepared.failures[_image_failure_key(raw_id)] = str(exc)
            continue
        prepared.dropped_no_relation += dropped
        for (subject, object_), group in groups.items():
            prepared.merged_repeats += len(group) - len(_best_per_predicate(group))
            key = relation_key(image_id, subject, object_)
            try:
                record = records.get(image_id)
                if record is None:
                    raise RecordError(stage1_path, record_name, "image_id",
                                      f"image {shown(raw_id)} is not in {input_path}")
                if isinstance(record, RecordError):
                    raise record
                pair = _pair_data(record, subject, object_, group, top_k, input_path)
            except RecordError as exc:
                prepared.failures[key] = str(exc)
                continue
            pair["order"] = len(prepared.pairs)
            prepared.pairs.append(pair)
    # An image-level failure ("7|*|*") meets a pair key when a repeated stage-1 entry fails
    # and the first one has a pair of classes named "*". Moved to a key of four parts, it
    # cannot meet another pair key (a part never contains KEY_SEP).
    valid = {relation_key(p["image_id"], p["subject"], p["object"]) for p in prepared.pairs}
    separate_failure_keys(prepared.failures, valid, KEY_SEP)
    return prepared


def _image_failure_key(raw_id: object) -> str:
    """The key under which a whole stage-1 entry fails (kept short and unambiguous)."""
    text = str(raw_id)
    if not is_key_part(text):
        text = f"?{shown(text, 40)}"
    return f"{text}|*|*"


def _stage1_image_id(raw_id: str, seen: dict[str, str], path: Path, name: str) -> str:
    """The normalized id of a stage-1 entry (object keys are strings: "42" and "042" are one image)."""
    if not raw_id.strip():
        raise RecordError(path, name, "image_id", "the image id is empty")
    if len(raw_id) > NAME_MAX or KEY_SEP in raw_id:
        raise RecordError(path, name, "image_id",
                          f"expected an id of at most {NAME_MAX} characters without {KEY_SEP!r}")
    image_id = normalize_image_id(raw_id)
    if image_id in seen:
        raise RecordError(path, name, "image_id",
                          f"repeats image {seen[image_id]!r} (ids are compared as numbers)")
    seen[image_id] = raw_id
    return image_id


def _index_images(images: list, input_path: Path, root: str,
                  failures: dict[str, str]) -> dict[str, dict | RecordError]:
    """image id (normalized) -> valid record, or the RecordError that makes it unusable.

    A record without a usable id cannot be matched to any stage-1 entry: it is listed
    in ``failures`` under ``input[i]|*|*`` so the report shows it.
    """
    records: dict[str, Any] = {}
    raw_records: dict[str, tuple[str, dict]] = {}
    for i, record in enumerate(images):
        name = f"[{i}]"
        try:
            image_id = _input_image_id(record, input_path, name)
        except RecordError as exc:
            failures[f"input[{i}]|*|*"] = str(exc)
            continue
        name = f"[{i}] (image_id {image_id})"
        if image_id in raw_records:
            first_name, first = raw_records[image_id]
            if record != first:
                # Two different records for one image: which one stage 1 saw is unknowable.
                records[image_id] = RecordError(input_path, name, "image_id",
                                                f"repeats the image id of record {first_name} "
                                                "with different content")
            continue
        raw_records[image_id] = (name, record)
        try:
            records[image_id] = _checked_image_record(record, input_path, name, root)
        except RecordError as exc:
            records[image_id] = exc
    return records


def _input_image_id(record: object, path: Path, name: str) -> str:
    if not isinstance(record, dict):
        raise RecordError(path, name, "record", f"expected an object, got {shown(record)}")
    if "image_id" not in record:
        raise RecordError(path, name, "image_id", "missing")
    raw = record["image_id"]
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise RecordError(path, name, "image_id", f"expected an integer or a string, got {shown(raw)}")
    if not is_key_part(str(raw)):
        raise RecordError(path, name, "image_id",
                          f"expected a non-empty id of at most {NAME_MAX} characters without "
                          f"{KEY_SEP!r}, got {shown(raw)}")
    return normalize_image_id(raw)


def _checked_image_record(record: dict, path: Path, name: str, root: str) -> dict:
    image_path = checked_input_path(record.get("image_path"), path, name, "image_path", root)
    objects = record.get("objects")
    if not isinstance(objects, list):
        raise RecordError(path, name, "objects", f"expected a list of objects, got {shown(objects)}")
    by_name: dict[str, list[ObjectEntry]] = {}
    for j, obj in enumerate(objects):
        where = f"objects[{j}]"
        if not isinstance(obj, dict) or not _is_name(obj.get("class_name")):
            raise RecordError(path, name, f"{where}.class_name",
                              f"expected a non-empty string of at most {NAME_MAX} characters")
        by_name.setdefault(nfc(obj["class_name"]), []).append(
            ObjectEntry(j, obj, _object_error(obj, path, name, where)))
    return {"image_id": record["image_id"], "image_path": image_path, "objects": by_name,
            "record": name}


def _object_error(obj: dict, path: Path, name: str, where: str) -> RecordError | None:
    """What makes this object unusable (its box, a NaN anywhere in it), or None."""
    try:
        _check_bbox(obj.get("bbox"), path, name, f"{where}.bbox")
    except RecordError as exc:
        return exc
    bad = invalid_number_at(obj, where)
    if bad:
        return RecordError(path, name, bad, "NaN or Infinity is not a valid value")
    return None


def _check_bbox(bbox: object, path: Path, name: str, where: str) -> None:
    if (
        not isinstance(bbox, list)
        or len(bbox) != 4
        or not all(_is_number(v) for v in bbox)
    ):
        raise RecordError(path, name, where, f"expected [x1, y1, x2, y2] finite numbers, got {shown(bbox)}")
    x1, y1, x2, y2 = bbox
    if x2 <= x1 or y2 <= y1:
        raise RecordError(path, name, where, f"box {bbox} is inverted or has zero area")
    if x1 < 0 or y1 < 0:
        raise RecordError(path, name, where, f"box {bbox} starts at a negative coordinate")


def _is_number(value: object) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float (read_json marks those already)
        return False


def _is_name(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip()) and len(value) <= NAME_MAX


def _group_candidates(candidates: object, path: Path, name: str) -> tuple[dict[tuple[str, str], list], int]:
    """(subject, object) -> its candidates, first-seen order, and how many "no relation"
    candidates (in any spelling, see predicate_key) were dropped. Class names compare in NFC."""
    if not isinstance(candidates, list):
        raise RecordError(path, name, "candidates", f"expected a list of candidates, got {shown(candidates)}")
    groups: dict[tuple[str, str], list] = {}
    dropped = 0
    for i, cand in enumerate(candidates):
        where = f"{name}[{i}]"
        _check_candidate(cand, path, where)
        if predicate_key(cand["predicted_predicate"]) == NO_RELATION:
            dropped += 1
            continue
        groups.setdefault((nfc(cand["subject"]), nfc(cand["object"])), []).append(cand)
    return groups, dropped


def predicate_key(predicate: str) -> str:
    """What a predicate is compared by: case, Unicode form, and runs of spaces, ``_`` and ``-``
    ignored ("No_Relation", "no-relation" and "no  relation" are "no relation")."""
    text = unicodedata.normalize("NFKC", predicate).casefold()
    return " ".join(part for part in re.split(r"[\s_-]+", text) if part)


def _best_per_predicate(group: list) -> list:
    """The group's candidates by similarity, highest first, each predicate (predicate_key) once:
    a repeated predicate would take two top-K slots and generate the same description twice."""
    best: dict[str, dict] = {}
    for cand in sorted(group, key=lambda c: c["similarity"], reverse=True):
        best.setdefault(predicate_key(cand["predicted_predicate"]), cand)
    return list(best.values())


def _check_candidate(cand: object, path: Path, where: str) -> None:
    if not isinstance(cand, dict):
        raise RecordError(path, where, "candidate", f"expected an object, got {shown(cand)}")
    for fld in ("subject", "object", "predicted_predicate"):
        if not _is_name(cand.get(fld)):
            raise RecordError(path, where, fld,
                              f"expected a non-empty string of at most {NAME_MAX} characters, "
                              f"got {shown(cand.get(fld))}")
    for fld in ("subject", "object", "predicted_predicate"):
        # Class names and predicates go into the relation prompt.
        problem = special_token_problem(cand[fld])
        if problem:
            raise RecordError(path, where, fld, problem)
    for fld in ("subject", "object"):
        if KEY_SEP in cand[fld]:
            raise RecordError(path, where, fld, f"{KEY_SEP!r} is not allowed in a class name "
                              "(it separates the parts of item keys)")
    if not _is_number(cand.get("similarity")):
        raise RecordError(path, where, "similarity",
                          f"expected a finite number, got {shown(cand.get('similarity'))}")
    if not isinstance(cand.get("has_gt", False), (bool, type(None))):
        raise RecordError(path, where, "has_gt", f"expected true or false, got {shown(cand['has_gt'])}")
    gt = cand.get("gt_predicates")
    if gt is not None and not (isinstance(gt, list) and all(isinstance(p, str) for p in gt)):
        raise RecordError(path, where, "gt_predicates", f"expected a list of strings, got {shown(gt)}")


def _pick_object(record: dict, class_name: str, role: str, path: Path) -> ObjectEntry:
    """The one object of the image with this class name; refused if none, several or bad."""
    entries = record["objects"].get(class_name, [])
    if not entries:
        raise RecordError(path, record["record"], "objects",
                          f"{role} {shown(class_name)} is not among the image's objects")
    if len(entries) > 1:
        where = ", ".join(f"objects[{e.index}]" for e in entries)
        raise RecordError(path, record["record"], "objects",
                          f"{role} {shown(class_name)} is ambiguous: {len(entries)} objects ({where}) "
                          "have that class name, and stage 1 names classes only")
    entry = entries[0]
    if entry.error is not None:
        raise entry.error
    return entry


def _pair_data(record: dict, subject: str, object_: str, group: list, top_k: int,
               input_path: Path) -> dict[str, Any]:
    subject_entry = _pick_object(record, subject, "subject", input_path)
    object_entry = _pick_object(record, object_, "object", input_path)
    ranked = _best_per_predicate(group)[:top_k]
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
        "subject_obj": subject_entry.obj,
        "object_obj": object_entry.obj,
        "stage1_top_k": [
            {"predicate": c["predicted_predicate"], "similarity": c["similarity"]} for c in ranked
        ],
        "has_gt": any(bool(c.get("has_gt")) for c in group),
        "gt_predicates": gt_predicates,
        # Where the pair came from, so a worker-side failure (missing image, box outside
        # the image) names the file, the record and the field like the ones found here.
        "source": {"file": without_password(str(input_path)), "record": record["record"],
                   "subject_field": f"objects[{subject_entry.index}]",
                   "object_field": f"objects[{object_entry.index}]"},
    }
