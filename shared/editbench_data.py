"""Job A's input: a benchmark file of categories, each a list of pairs.

``{"物理": [{"pair_id", "original_image_b64", "original_description", "edit_instruction"}, ...], ...}``

Each image is decoded and validated once, here; a bad pair becomes a failure with a
reason naming the file, the record and the field, and the other pairs go on.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from shared.errors import InputFileError, RecordError
from shared.jsonio import read_json

TEXT_FIELDS = ("original_description", "edit_instruction")


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
    return f"{category}|{pair_id}"


def prepare_benchmark(path: Path) -> PreparedBenchmark:
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise InputFileError(path, "expected a JSON object mapping each category name to a list of pairs")
    if not data:
        raise InputFileError(path, "the benchmark has no categories")
    prepared = PreparedBenchmark(categories=list(data))
    for category, pairs in data.items():
        if not pairs:
            prepared.failures[editbench_key(category, "*")] = f"{path}: category {category!r} has no pairs"
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
    return prepared


def _failure_key(category: str, raw: object, index: int) -> str:
    pair_id = raw.get("pair_id") if isinstance(raw, dict) else None
    name = str(pair_id) if isinstance(pair_id, (str, int)) and not isinstance(pair_id, bool) else "?"
    # The index keeps keys unique when a pair id is missing or repeated.
    return editbench_key(category, f"{name}#{index}")


def _checked_pair(raw: object, category: str, path: Path, record: str) -> BenchmarkPair:
    if not isinstance(raw, dict):
        raise RecordError(path, record, "pair", "expected an object")
    pair_id = raw.get("pair_id")
    if isinstance(pair_id, bool) or not isinstance(pair_id, (str, int)) or str(pair_id).strip() == "":
        raise RecordError(path, record, "pair_id", f"expected a non-empty string or integer, got {pair_id!r}")
    record = f"{record} (pair_id {pair_id})"
    for name in TEXT_FIELDS:
        if not isinstance(raw.get(name), str) or not raw[name].strip():
            raise RecordError(path, record, name, "expected a non-empty string")
    image_bytes, extension = decode_image_b64(raw.get("original_image_b64"), path, record)
    return BenchmarkPair(category=category, pair_id=str(pair_id), image_bytes=image_bytes,
                         image_extension=extension, original_description=raw["original_description"],
                         edit_instruction=raw["edit_instruction"])


def decode_image_b64(value: object, path: Path, record: str) -> tuple[bytes, str]:
    """The image's bytes and file extension; the image is fully decoded once to prove it is whole."""
    fld = "original_image_b64"
    if not isinstance(value, str) or not value:
        raise RecordError(path, record, fld, "expected a base64 string")
    if value.startswith("data:"):  # a data URL: data:image/png;base64,....
        value = value.partition(",")[2]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RecordError(path, record, fld, f"not valid base64 ({exc})") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            extension = (img.format or "png").lower()
    except Image.DecompressionBombError as exc:
        raise RecordError(path, record, fld, f"image too large to decode safely: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad data
        raise RecordError(path, record, fld, f"not a readable image ({exc})") from None
    return data, {"jpeg": "jpg"}.get(extension, extension)
