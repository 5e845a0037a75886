"""The editbench job's input: a benchmark file of categories, each a list of pairs, in one of four shapes.

A pair is ``{"pair_id", "original_image_b64" or "original_image_path", "edit_instruction"}`` and
optionally ``"original_description"``; a path is relative to the benchmark file's folder, and
``original_image_path`` may list several images (an editor that takes several gets them all).
Every other field of the record is kept with the pair (``fields``). evalfleet's own shapes
(``SHAPES``):

- ``category-map``: ``{"物理": [pairs], ...}``;
- ``categories-key``: ``{"categories": {"物理": [pairs], ...}, ...}`` (other top-level keys are
  metadata, ignored);
- ``category-list``: ``[{"category_name": "物理", "data_pairs": [pairs]}, ...]``;
- ``json-lines``: one pair per line, each with a ``"category"`` field (a ``.jsonl`` or ``.ndjson``
  file, or any file of several JSON values, one per line).

The public benchmarks' layouts (GEdit-Bench, KRIS-Bench, ImgEdit-Bench, RISEBench) and any file of
records with a field mapping are read by ``shared/editbench/formats/``.

Every shape of one benchmark gives the same pairs in the same order (categories in order of
first appearance, pairs in file order within each). Each image is decoded and validated once,
here; a bad pair (or a bad line) becomes a failure with a reason naming the file, the record and
every field at fault, and the other pairs go on. A category that is not a usable list (empty name, a '|'
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
from shared.editbench.formats import FORMATS, native_format, read_native
from shared.editbench.formats.fields import Reading
from shared.editbench.formats.records import Group as _Group
from shared.editbench.formats.records import category_problem
from shared.errors import InputFileError, RecordError, shown
from shared import storage
from shared.artifacts import sha256_bytes
from shared.files import UnreadableFile
from shared.images import UnshowableImage, as_displayed, checked_data_root, checked_input_path, load_fully
from shared.jsonio import JsonProblem, parse_json, read_text
from shared.keys import KEY_SEP, NAME_MAX, is_key_part, location_digest, nfc, separate_failure_keys
from shared.model_text import special_token_problem

TEXT_FIELDS = ("original_description", "edit_instruction")
OPTIONAL_FIELDS = ("original_description",)
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
class PairImage:
    data: bytes
    extension: str
    file: str = ""  # where it was read from, for an image given by path


@dataclass(frozen=True)
class BenchmarkPair:
    category: str
    pair_id: str
    images: tuple[PairImage, ...]  # the input image(s), in the record's order
    original_description: str | None  # None: the benchmark has none
    edit_instruction: str
    fields: dict = field(default_factory=dict)  # the record's own fields, JSON values
    source: str = ""  # the file it was read from, and its record there (for messages)
    record: str = ""
    folder: str = ""  # where its record's relative image paths are

    @property
    def key(self) -> str:
        return editbench_key(self.category, self.pair_id)

    @property
    def image_bytes(self) -> bytes:
        return self.images[0].data

    @property
    def image_extension(self) -> str:
        return self.images[0].extension


@dataclass
class PreparedBenchmark:
    pairs: list[BenchmarkPair] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # item key -> reason
    categories: list[str] = field(default_factory=list)
    shape: str = ""  # one of SHAPES or FORMATS
    input_files: list[str | Path] = field(default_factory=list)  # the benchmark's files (or objects) read
    input_digests: list[str] = field(default_factory=list)  # the sha256 of each, of the very bytes read
    reading: dict = field(default_factory=dict)  # how it was read, where not by default (Reading.record)

    @property
    def image_files(self) -> list[str]:
        """The image files (or objects) the pairs were read from: part of the benchmark's content."""
        return [i.file for p in self.pairs for i in p.images if i.file]

    @property
    def image_digests(self) -> list[str]:
        """The sha256 of each of image_files' content, as read (an object is not read again)."""
        return [sha256_bytes(i.data) for p in self.pairs for i in p.images if i.file]

    @property
    def described(self) -> str:
        """What the shape or format is, for messages."""
        return SHAPES.get(self.shape) or FORMATS[self.shape]


def editbench_key(category: str, pair_id: str) -> str:
    return f"{category}{KEY_SEP}{pair_id}"


def prepare_benchmark(path: str | Path, data_root: str | Path = "",
                      reading: Reading | None = None) -> PreparedBenchmark:
    """Read a benchmark in any of SHAPES or FORMATS; ``data_root`` (if set) confines image paths.
    ``path`` may be an object's URL (or a folder of a store): each object is read once, and
    relative image paths resolve against its own location."""
    with storage.reads_held():  # the digests are of the bytes the pairs come from
        prepared = _prepared(storage.as_location(path), checked_data_root(data_root), reading or Reading())
        prepared.input_digests = [location_digest(file) for file in prepared.input_files]
    return prepared


def _prepared(path: str | Path, root: str, reading: Reading) -> PreparedBenchmark:
    """The benchmark's pairs and failures, read as ``reading`` says (prepare_benchmark's work)."""
    prepared = PreparedBenchmark(reading=reading.record())
    fmt = native_format(path, reading)
    if fmt:
        native = read_native(path, fmt, reading)
        prepared.shape, groups, prepared.input_files = fmt, native.groups, native.input_files
        for key, reason in native.failures:
            _add_failure(prepared, key, reason)
    else:
        prepared.shape, groups = _read_groups(path, prepared)
        prepared.input_files = [path]
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


def _read_groups(path: str | Path, prepared: PreparedBenchmark) -> tuple[str, list[_Group]]:
    """The file's shape and its categories; a file of no known shape raises InputFileError."""
    text = read_text(path)
    if storage.suffix(path).lower() in JSON_LINES_SUFFIXES:
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


def _json_lines_groups(path: str | Path, text: str, prepared: PreparedBenchmark) -> list[_Group]:
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
    problem = category_problem(category)
    if problem:
        return problem
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


def _prepare_category(path: str | Path, group: _Group, root: str, prepared: PreparedBenchmark) -> None:
    category = group.name
    file = group.file or path
    base = group.base or storage.parent(file)
    seen: set[str] = set()
    for i, (raw, record) in enumerate(zip(group.pairs, group.labels)):
        fields = group.fields[i] if group.fields else _own_fields(raw)
        try:
            pair = _checked_pair(raw, category, file, record, root, base, fields)
            if pair.pair_id in seen:
                raise RecordError(file, record, "pair_id",
                                  f"{pair.pair_id!r} repeats an earlier pair of {category!r}")
        except (RecordError, RecordProblems) as exc:
            problems = exc.problems if isinstance(exc, RecordProblems) else [exc]
            named = [_as_benchmark_names(p, group.sources) for p in problems]
            prepared.failures[_failure_key(category, raw, i)] = str(named[0] if len(named) == 1
                                                                    else RecordProblems(named))
            continue
        seen.add(pair.pair_id)
        prepared.pairs.append(pair)


def _as_benchmark_names(problem: RecordError, sources: dict[str, str]) -> RecordError:
    """The problem naming the benchmark's own field (ImgEdit's ``id``), not evalfleet's name."""
    name, bracket, index = problem.field.partition("[")
    if name not in sources:
        return problem
    return RecordError(problem.path, problem.record, sources[name] + bracket + index, _message(problem))


def _own_fields(raw: object) -> dict:
    """A record of evalfleet's own shapes keeps its fields but its image data."""
    return {k: v for k, v in raw.items() if k != "original_image_b64"} if isinstance(raw, dict) else {}


def _failure_key(category: str, raw: object, index: int) -> str:
    pair_id = raw.get("pair_id") if isinstance(raw, dict) else None
    usable = isinstance(pair_id, (str, int)) and not isinstance(pair_id, bool)
    name = str(pair_id) if usable and len(str(pair_id)) <= NAME_MAX else "?"
    # The index keeps keys unique when a pair id is missing or repeated.
    return editbench_key(category, f"{name}#{index}")


class RecordProblems(Exception):
    """Every problem of one record (each a RecordError), said at once."""

    def __init__(self, problems: list[RecordError]):
        first = problems[0]
        listed = "; ".join(f"field {p.field!r}: {_message(p)}" for p in problems)
        super().__init__(f"{first.path}: record {first.record}: {len(problems)} problems: {listed}")
        self.problems = problems


def _message(problem: RecordError) -> str:
    return str(problem).split(f"field {problem.field!r}: ", 1)[1]


def _checked_pair(raw: object, category: str, path: str | Path, record: str, root: str, base: str | Path,
                  fields: dict) -> BenchmarkPair:
    """The pair, or RecordError (one problem) / RecordProblems (several) naming each field at fault."""
    if not isinstance(raw, dict):
        raise RecordError(path, record, "pair", f"expected an object, got {shown(raw)}")
    problems: list[RecordError] = []
    pair_id = raw.get("pair_id")
    if isinstance(pair_id, bool) or not isinstance(pair_id, (str, int)) or str(pair_id).strip() == "":
        problems.append(RecordError(path, record, "pair_id",
                                    f"expected a non-empty string or integer, got {shown(pair_id)}"))
    elif len(str(pair_id)) > NAME_MAX:
        problems.append(RecordError(path, record, "pair_id",
                                    f"longer than {NAME_MAX} characters: {shown(pair_id)}"))
    else:
        record = f"{record} (pair_id {pair_id})"
    texts = {}
    for name in TEXT_FIELDS:
        try:
            texts[name] = _checked_text(raw, name, path, record)
        except RecordError as exc:
            problems.append(exc)
    images: list[PairImage] = []
    try:
        images = _pair_images(raw, path, record, root, base, problems)
    except RecordError as exc:
        problems.append(exc)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise RecordProblems(problems)
    return BenchmarkPair(category=category, pair_id=str(pair_id), images=tuple(images),
                         original_description=texts["original_description"],
                         edit_instruction=texts["edit_instruction"], fields=fields,
                         source=str(path), record=record, folder=str(base))


def field_images(pair: BenchmarkPair, name: str, data_root: str | Path = "") -> list[PairImage]:
    """The image(s) the record field ``name`` names (a path or a list of them, where the record's
    own images are); [] when the record has none. RecordError names the file that cannot be read."""
    value = pair.fields.get(name)
    if value is None or value == "" or value == []:
        return []
    several = isinstance(value, list)
    root = checked_data_root(data_root)
    return [_one_image(one, pair.source, pair.record, f"{name}[{i}]" if several else name, root, pair.folder)
            for i, one in enumerate(value if several else [value])]


def _checked_text(raw: dict, name: str, path: Path, record: str) -> str | None:
    value = raw.get(name)
    if name in OPTIONAL_FIELDS and (value is None or value == ""):
        return None
    if not isinstance(value, str) or not value.strip():
        raise RecordError(path, record, name, f"expected a non-empty string, got {shown(value)}")
    if len(value) > TEXT_MAX:
        raise RecordError(path, record, name, f"{len(value)} characters; at most {TEXT_MAX} are accepted")
    problem = special_token_problem(value)
    if problem:
        raise RecordError(path, record, name, problem)
    return value


def _pair_images(raw: dict, path: str | Path, record: str, root: str, base: str | Path,
                 problems: list[RecordError]) -> list[PairImage]:
    """The pair's image(s) from ``original_image_b64`` or ``original_image_path`` (a path, a list
    of them, or an image as a dataset file holds it: ``{"bytes", "path"}``); each bad image is
    added to ``problems``."""
    if "original_image_path" not in raw:
        return [PairImage(*decode_image_b64(raw.get("original_image_b64"), path, record))]
    fld = "original_image_path"
    if "original_image_b64" in raw:
        raise RecordError(path, record, fld, "give either original_image_b64 or original_image_path, not both")
    value = raw[fld]
    several = isinstance(value, list)
    if several and not value:
        raise RecordError(path, record, fld, "an empty list of images")
    images = []
    for i, one in enumerate(value if several else [value]):
        try:
            images.append(_one_image(one, path, record, f"{fld}[{i}]" if several else fld, root, base))
        except RecordError as exc:
            problems.append(exc)
    return images


def _one_image(value: object, path: str | Path, record: str, fld: str, root: str, base: str | Path) -> PairImage:
    if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)):
        data = bytes(value["bytes"])
        return PairImage(data, _image_extension(data, path, record, fld))
    if isinstance(value, dict):  # a dataset's image struct without bytes: its file
        value = value.get("path")
    if isinstance(value, str) and value.strip():
        value = storage.resolve_under(base, value)  # a path relative to the record's folder, local or remote
    # A URL (s3://, https://) is read here, once, like a file: the run uploads the bytes read.
    image_file = checked_input_path(value, path, record, fld, root)
    try:
        data = storage.read_bytes(image_file)
    except (UnreadableFile, storage.StorageError) as exc:
        raise RecordError(path, record, fld, str(exc)) from None
    return PairImage(data, _image_extension(data, path, record, fld), image_file)


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
