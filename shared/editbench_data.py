"""Job A's input: a benchmark file of categories, each a list of pairs.

``{"物理": [{"pair_id", "original_image_b64", "original_description", "edit_instruction"}, ...], ...}``

Each image is decoded and validated once, here; a bad pair becomes a failure with a
reason naming the file, the record and the field, and the other pairs go on. A
category that is not a usable list (empty name, a '|' in it, not a list, no pairs) fails as a
whole under ``<category>|*``. Only a file that is not a JSON object of categories
stops the command.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from shared.errors import InputFileError, RecordError, shown
from shared.images import load_fully
from shared.jsonio import read_json
from shared.keys import KEY_SEP, NAME_MAX, is_key_part, separate_failure_keys
from shared.model_text import special_token_problem

TEXT_FIELDS = ("original_description", "edit_instruction")
# Longest description or instruction: both go into the judge's prompt.
TEXT_MAX = 10_000


@dataclass(frozen=True)
class BenchmarkPair:
    category: str
    pair_id: str
    image_bytes: bytes
    image_extension: str
    original_description: str
    edit_instruction: str

    @property
    def key(self) -> str:
        return editbench_key(self.category, self.pair_id)


@dataclass
class PreparedBenchmark:
    pairs: list[BenchmarkPair] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # item key -> reason
    categories: list[str] = field(default_factory=list)


def editbench_key(category: str, pair_id: str) -> str:
    return f"{category}{KEY_SEP}{pair_id}"


def prepare_benchmark(path: Path) -> PreparedBenchmark:
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputFileError(path, "expected a JSON object mapping each category name to a list of pairs")
    if not data:
        raise InputFileError(path, "the benchmark has no categories")
    # A name unusable in a key stays out of the category list (and the chart): its failure says why.
    prepared = PreparedBenchmark(categories=[c for c in data if is_key_part(c)])
    for category, pairs in data.items():
        problem = _category_problem(category, pairs)
        if problem:
            prepared.failures[_category_key(category)] = f"{path}: category {shown(category)}: {problem}"
            continue
        _prepare_category(path, category, pairs, prepared)
    # A failure key ("c|p-1#0") may spell a valid pair's key (a pair id "p-1#0").
    separate_failure_keys(prepared.failures, {p.key for p in prepared.pairs}, "#")
    return prepared


def _category_problem(category: str, pairs: object) -> str | None:
    if not category.strip():
        return "the category name is empty"
    if len(category) > NAME_MAX:
        return f"the category name is longer than {NAME_MAX} characters"
    if KEY_SEP in category:
        # Item keys are category|pair_id: "a|b" + "c" and "a" + "b|c" would be one key.
        return f"the category name contains {KEY_SEP!r}, which item keys use as a separator; rename it"
    if not isinstance(pairs, list):
        return f"expected a list of pairs, got {shown(pairs)}"
    if not pairs:
        return "has no pairs"
    return None


def _category_key(category: str) -> str:
    """The failure key of a whole category; a name unusable in a key is shown shortened, without
    the separator, so the key still splits into (category, "*")."""
    name = category if is_key_part(category) else "?" + shown(category, 40).replace(KEY_SEP, "/")
    return editbench_key(name, "*")


def _prepare_category(path: Path, category: str, pairs: list, prepared: PreparedBenchmark) -> None:
    seen: set[str] = set()
    for i, raw in enumerate(pairs):
        record = f"{category}[{i}]"
        try:
            pair = _checked_pair(raw, category, path, record)
            if pair.pair_id in seen:
                raise RecordError(path, record, "pair_id",
                                  f"{pair.pair_id!r} repeats an earlier pair of {category!r}")
        except RecordError as exc:
            prepared.failures[_failure_key(category, raw, i)] = str(exc)
            continue
        seen.add(pair.pair_id)
        prepared.pairs.append(pair)


def _failure_key(category: str, raw: object, index: int) -> str:
    pair_id = raw.get("pair_id") if isinstance(raw, dict) else None
    usable = isinstance(pair_id, (str, int)) and not isinstance(pair_id, bool)
    name = str(pair_id) if usable and len(str(pair_id)) <= NAME_MAX else "?"
    # The index keeps keys unique when a pair id is missing or repeated.
    return editbench_key(category, f"{name}#{index}")


def _checked_pair(raw: object, category: str, path: Path, record: str) -> BenchmarkPair:
    if not isinstance(raw, dict):
        raise RecordError(path, record, "pair", f"expected an object, got {shown(raw)}")
    pair_id = raw.get("pair_id")
    if isinstance(pair_id, bool) or not isinstance(pair_id, (str, int)) or str(pair_id).strip() == "":
        raise RecordError(path, record, "pair_id", f"expected a non-empty string or integer, got {shown(pair_id)}")
    if len(str(pair_id)) > NAME_MAX:
        raise RecordError(path, record, "pair_id", f"longer than {NAME_MAX} characters: {shown(pair_id)}")
    record = f"{record} (pair_id {pair_id})"
    for name in TEXT_FIELDS:
        value = raw.get(name)
        if not isinstance(value, str) or not value.strip():
            raise RecordError(path, record, name, f"expected a non-empty string, got {shown(value)}")
        if len(value) > TEXT_MAX:
            raise RecordError(path, record, name, f"{len(value)} characters; at most {TEXT_MAX} are accepted")
        problem = special_token_problem(value)
        if problem:
            raise RecordError(path, record, name, problem)
    image_bytes, extension = decode_image_b64(raw.get("original_image_b64"), path, record)
    return BenchmarkPair(category=category, pair_id=str(pair_id), image_bytes=image_bytes,
                         image_extension=extension, original_description=raw["original_description"],
                         edit_instruction=raw["edit_instruction"])


def decode_image_b64(value: object, path: Path, record: str) -> tuple[bytes, str]:
    """The image's bytes and file extension; the image is fully decoded once to prove it is whole.

    Images above Pillow's decompression-bomb threshold (about 89 million pixels) are refused.
    """
    fld = "original_image_b64"
    if not isinstance(value, str) or not value:
        raise RecordError(path, record, fld, f"expected a base64 string, got {shown(value)}")
    if value.startswith("data:"):  # a data URL: data:image/png;base64,....
        value = value.partition(",")[2]
    try:
        # Line breaks (MIME-style base64 wraps at 76 columns) are not errors; anything else is.
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RecordError(path, record, fld, f"not valid base64 ({exc})") from None
    try:
        with load_fully(io.BytesIO(data)) as img:
            extension = (img.format or "png").lower()
    except Image.DecompressionBombError as exc:
        raise RecordError(path, record, fld, f"image too large to decode safely: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad data
        raise RecordError(path, record, fld, f"not a readable image ({exc})") from None
    return data, {"jpeg": "jpg"}.get(extension, extension)
