"""The editbench job's input: a benchmark file of categories, each a list of pairs, in one of four shapes.

A pair is ``{"pair_id", "original_image_b64" or "original_image_path", "original_description",
"edit_instruction"}``; a path is relative to the benchmark file's folder. The shapes (``SHAPES``):

- ``category-map``: ``{"物理": [pairs], ...}``;
- ``categories-key``: ``{"categories": {"物理": [pairs], ...}, ...}`` (other top-level keys are
  metadata, ignored);
- ``category-list``: ``[{"category_name": "物理", "data_pairs": [pairs]}, ...]``;
- ``json-lines``: one pair per line, each with a ``"category"`` field (a ``.jsonl`` or ``.ndjson``
  file, or any file of several JSON values, one per line).

Every shape of one benchmark gives the same pairs in the same order (categories in order of
first appearance, pairs in file order within each). Each image is decoded and validated once,
here; a bad pair (or a bad line) becomes a failure with a reason naming the file, the record and
the field, and the other pairs go on. A category that is not a usable list (empty name, a '|'
in it, not a list, no pairs) fails as a whole under ``<category>|*``. Only a file that is none
of the shapes stops the command.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from shared.editbench.editor_families import aspect_problem
from shared.errors import InputFileError, RecordError, shown
from shared.files import UnreadableFile, read_bytes
from shared.images import UnshowableImage, as_displayed, checked_data_root, checked_input_path, load_fully
from shared.jsonio import JsonProblem, parse_json, read_text
from shared.keys import KEY_SEP, NAME_MAX, is_key_part, nfc, separate_failure_keys
from shared.model_text import special_token_problem

TEXT_FIELDS = ("original_description", "edit_instruction")
# Longest description or instruction: both go into the judge's prompt.
TEXT_MAX = 10_000

SHAPES = {
    "category-map": '{"<category>": [pairs]}',
    "categories-key": '{"categories": {"<category>": [pairs]}} (other top-level keys allowed)',
    "category-list": '[{"category_name": "<category>", "data_pairs": [pairs]}, ...]',
    "json-lines": 'JSON Lines: one pair per line, each with a "category" field',
}
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class BenchmarkPair:
    category: str
    pair_id: str
    image_bytes: bytes
    image_extension: str
    original_description: str
    edit_instruction: str
    image_file: str = ""  # where the image was read from, for a pair given original_image_path

    @property
    def key(self) -> str:
        return editbench_key(self.category, self.pair_id)


@dataclass
class PreparedBenchmark:
    pairs: list[BenchmarkPair] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # item key -> reason
    categories: list[str] = field(default_factory=list)
    shape: str = ""  # one of SHAPES

    @property
    def image_files(self) -> list[Path]:
        """The image files the pairs were read from: part of the benchmark's content."""
        return [Path(p.image_file) for p in self.pairs if p.image_file]


@dataclass
class _Group:
    """One category as found in the file, before its pairs are checked."""

    name: object
    pairs: object
    where: str  # how a message names the category's place in the file
    labels: list[str] = field(default_factory=list)  # each pair's record name, when pairs is a list
    problem: str = ""  # set when the entry is not a category at all: it fails under ``key``
    key: str = ""


def editbench_key(category: str, pair_id: str) -> str:
    return f"{category}{KEY_SEP}{pair_id}"


def prepare_benchmark(path: Path, data_root: str | Path = "") -> PreparedBenchmark:
    """Read a benchmark in any of SHAPES; ``data_root`` (if set) confines image paths."""
    path = Path(path)
    root = checked_data_root(data_root)
    prepared = PreparedBenchmark()
    prepared.shape, groups = _read_groups(path, prepared)
    if not groups and not prepared.failures:
        raise InputFileError(path, "the benchmark has no categories")
    seen: set[str] = set()
    for group in groups:
        if group.problem:
            _add_failure(prepared, group.key, f"{path}: {group.where}: {group.problem}")
            continue
        problem = _category_problem(group.name, group.pairs)
        if problem is None and group.name in seen:
            problem = ("repeats a category given earlier in the file (names are compared in Unicode's "
                       "composed form, NFC: an accent typed as a combining mark is the same name); "
                       "give each category once")
        if isinstance(group.name, str) and is_key_part(group.name) and group.name not in seen:
            # A name unusable in a key stays out of the category list (and the chart): its failure says why.
            seen.add(group.name)
            prepared.categories.append(group.name)
        if problem:
            _add_failure(prepared, _category_key(group.name), f"{path}: {group.where}: {problem}")
            continue
        _prepare_category(path, group, root, prepared)
    # A failure key ("c|p-1#0") may spell a valid pair's key (a pair id "p-1#0").
    separate_failure_keys(prepared.failures, {p.key for p in prepared.pairs}, "#")
    return prepared


def _read_groups(path: Path, prepared: PreparedBenchmark) -> tuple[str, list[_Group]]:
    """The file's shape and its categories; a file of no known shape raises InputFileError."""
    text = read_text(path)
    if path.suffix.lower() in JSON_LINES_SUFFIXES:
        return "json-lines", _json_lines_groups(path, text, prepared)
    try:
        data = parse_json(text)
    except JsonProblem as exc:
        if _looks_like_json_lines(text):
            return "json-lines", _json_lines_groups(path, text, prepared)
        raise InputFileError(path, str(exc)) from None
    if isinstance(data, dict) and isinstance(data.get("categories"), dict):
        return "categories-key", _map_groups(data["categories"], "categories.")
    if isinstance(data, dict) and isinstance(data.get("category"), str):
        return "json-lines", _json_lines_groups(path, text, prepared)  # a file of one line
    if isinstance(data, dict) and (not data or any(isinstance(v, list) for v in data.values())):
        return "category-map", _map_groups(data, "")
    if isinstance(data, list) and any(isinstance(e, dict) and "category_name" in e for e in data):
        return "category-list", _list_groups(data)
    expected = "; ".join(f"{name}: {form}" for name, form in SHAPES.items())
    raise InputFileError(path, f"not a benchmark: found {_top_level(data)}; expected one of these "
                               f"shapes: {expected} (each pair a JSON object)")


def _top_level(data: object) -> str:
    """What a file of an unknown shape holds at its top level, for the error message."""
    if isinstance(data, dict):
        keys = ", ".join(shown(k, 40) for k in list(data)[:5]) + (", ..." if len(data) > 5 else "")
        return f"a JSON object with the keys {keys}, none of them holding a list of pairs"
    if isinstance(data, list):
        if not data:
            return "an empty JSON list"
        first = data[0]
        what = (f"an object with the keys {', '.join(shown(k, 40) for k in list(first)[:5])}"
                if isinstance(first, dict) else shown(first, 40))
        return f"a JSON list of {len(data)} items, the first {what}, none with a 'category_name'"
    return f"a single JSON value {shown(data, 40)}, not an object or a list"


def _looks_like_json_lines(text: str) -> bool:
    """Several JSON values, one per line: some line is an object with a "category" field."""
    for line in text.split("\n"):
        try:
            value = parse_json(line) if line.strip() else None
        except JsonProblem:
            continue
        if isinstance(value, dict) and "category" in value:
            return True
    return False


def _map_groups(categories: dict, prefix: str) -> list[_Group]:
    return [_Group(nfc(name), pairs, f"category {shown(name)}", _labels(pairs, f"{prefix}{name}"))
            for name, pairs in categories.items()]


def _list_groups(data: list) -> list[_Group]:
    groups = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or "category_name" not in entry:
            groups.append(_Group(None, None, f"[{i}]", key=editbench_key(f"?[{i}]", "*"),
                                 problem=f"expected an object with 'category_name' and 'data_pairs', "
                                         f"got {shown(entry)}"))
            continue
        name = nfc(entry["category_name"])
        groups.append(_Group(name, entry.get("data_pairs"), f"[{i}] (category {shown(name)})",
                             _labels(entry.get("data_pairs"), f"[{i}].data_pairs", f" (category {shown(name)})")))
    return groups


def _labels(pairs: object, prefix: str, suffix: str = "") -> list[str]:
    return [f"{prefix}[{i}]{suffix}" for i in range(len(pairs))] if isinstance(pairs, list) else []


def _json_lines_groups(path: Path, text: str, prepared: PreparedBenchmark) -> list[_Group]:
    """One group per category, in order of first appearance; a bad line fails alone."""
    groups: dict[str, _Group] = {}
    # Split on "\n" only: str.splitlines() would also split inside a JSON string (U+2028).
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        record = f"line {number}"
        try:
            raw = parse_json(line)
        except JsonProblem as exc:
            _add_failure(prepared, _line_key(number), f"{path}: {record}: {exc}")
            continue
        category = nfc(raw.get("category")) if isinstance(raw, dict) else None
        if not isinstance(raw, dict):
            reason = str(RecordError(path, record, "pair", f"expected an object, got {shown(raw)}"))
        elif not isinstance(category, str) or not is_key_part(category):
            reason = str(RecordError(path, record, "category", _category_problem(category, [raw]) or ""))
        else:
            group = groups.setdefault(category, _Group(category, [], f"category {shown(category)}"))
            group.pairs.append(raw)
            group.labels.append(f"{record} (category {shown(category)})")
            continue
        _add_failure(prepared, _line_key(number), reason)
    return list(groups.values())


def _line_key(number: int) -> str:
    """The failure key of a line that names no usable category."""
    return editbench_key(f"?line {number}", "*")


def _add_failure(prepared: PreparedBenchmark, key: str, reason: str) -> None:
    n = 2
    unique = key
    while unique in prepared.failures:  # a category given twice, each failing whole
        unique, n = f"{key}#{n}", n + 1
    prepared.failures[unique] = reason


def _category_problem(category: object, pairs: object) -> str | None:
    if not isinstance(category, str):
        return f"the category name must be a string, got {shown(category)}"
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


def _category_key(category: object) -> str:
    """The failure key of a whole category; a name unusable in a key is shown shortened, without
    the separator, so the key still splits into (category, "*")."""
    usable = isinstance(category, str) and is_key_part(category)
    name = category if usable else "?" + shown(category, 40).replace(KEY_SEP, "/")
    return editbench_key(name, "*")


def _prepare_category(path: Path, group: _Group, root: str, prepared: PreparedBenchmark) -> None:
    category = group.name
    seen: set[str] = set()
    for i, (raw, record) in enumerate(zip(group.pairs, group.labels)):
        try:
            pair = _checked_pair(raw, category, path, record, root)
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


def _checked_pair(raw: object, category: str, path: Path, record: str, root: str) -> BenchmarkPair:
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
    image_bytes, extension, image_file = _pair_image(raw, path, record, root)
    return BenchmarkPair(category=category, pair_id=str(pair_id), image_bytes=image_bytes,
                         image_extension=extension, original_description=raw["original_description"],
                         edit_instruction=raw["edit_instruction"], image_file=image_file)


def _pair_image(raw: dict, path: Path, record: str, root: str) -> tuple[bytes, str, str]:
    """The pair's image bytes, extension and file (or "") from ``original_image_b64`` or from
    the file ``original_image_path``."""
    if "original_image_path" not in raw:
        return *decode_image_b64(raw.get("original_image_b64"), path, record), ""
    if "original_image_b64" in raw:
        raise RecordError(path, record, "original_image_path",
                          "give either original_image_b64 or original_image_path, not both")
    fld = "original_image_path"
    image_file = Path(checked_input_path(raw[fld], path, record, fld, root))
    try:
        data = read_bytes(image_file)
    except UnreadableFile as exc:
        raise RecordError(path, record, fld, str(exc)) from None
    return data, _image_extension(data, path, record, fld), str(image_file)


def decode_image_b64(value: object, path: Path, record: str) -> tuple[bytes, str]:
    """The image's bytes and file extension; the image is fully decoded once to prove it is whole.

    Images above Pillow's decompression-bomb threshold (about 89 million pixels) are refused.
    """
    fld = "original_image_b64"
    if not isinstance(value, str) or not value:
        raise RecordError(path, record, fld,
                          f"expected a base64 string (or an original_image_path), got {shown(value)}")
    if value.startswith("data:"):  # a data URL: data:image/png;base64,....
        value = value.partition(",")[2]
    try:
        # Line breaks (MIME-style base64 wraps at 76 columns) are not errors; anything else is.
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RecordError(path, record, fld, f"not valid base64 ({exc})") from None
    return data, _image_extension(data, path, record, fld)


def _image_extension(data: bytes, path: Path, record: str, fld: str) -> str:
    """The file extension of an image's format, once the image decoded whole."""
    buffer = io.BytesIO(data)
    try:
        with load_fully(buffer) as img:
            extension = (img.format or "png").lower()
            as_displayed(img)  # what the editor and the judge will see, refused here if nothing
            size = img.size
    except Image.DecompressionBombError as exc:
        raise RecordError(path, record, fld, f"image too large to decode safely: {exc}") from None
    except UnshowableImage as exc:
        raise RecordError(path, record, fld, f"image cannot be shown: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad data
        # Pillow names the buffer it read (``<_io.BytesIO object at 0x...>``): say what it held.
        reason = str(exc).replace(repr(buffer), f"the image's {len(data)} bytes (starting {data[:8]!r})")
        raise RecordError(path, record, fld, f"not a readable image ({reason})") from None
    problem = aspect_problem(*size)
    if problem:
        raise RecordError(path, record, fld, problem)
    return {"jpeg": "jpg"}.get(extension, extension)
