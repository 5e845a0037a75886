"""Where each public benchmark's own evaluation script reads a model's edits: ``export`` writes
them there and ``run editbench --edits DIR`` reads them from there (one layout, both ways).

- ``gedit``: ``fullset/<task_type>/<instruction_language>/<key>.png``, the input image beside it
  as ``<key>_SRCIMG.png`` (stepfun-ai/Step1X-Edit, GEdit-Bench/test_gedit_score.py, which reads
  both under ``<save_path>/<model_name>/``; GEdit-Bench/EVAL.md draws the tree).
- ``kris``: ``<category>/<id>.jpg`` (mercurystraw/Kris_Bench, metrics_common.py and
  metrics_temporal_prediction.py: ``results/<model>/<category>/<image_id>.jpg``; the inputs are
  read from the benchmark's own folder).
- ``imgedit``: ``<key>.png`` in one folder (PKU-YuanGroup/ImgEdit, Benchmark/Basic/basic_bench.py:
  ``--result_img_folder``; the inputs from its ``--origin_img_root``).
- ``rise``: ``images/<category>/<index>.png`` (PhoenixZ810/RISEBench, gpt_eval.py, ``find_image``
  under ``--output outputs/<model>``: png, then jpg, jpeg; the inputs from its ``--input data``).
- ``flat`` (``--edits`` only): ``<pair id>.<png|jpg|jpeg|webp>`` in one folder.

A name is made of the benchmark's own ids; an id that is no plain file name (``..``, empty, a
backslash) or two pairs named alike leave those pairs without a place, each saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Callable, Iterable, Mapping

# The longest name made from an id: with an extension and a temporary file's prefix it stays
# within the 255 bytes file systems allow.
NAME_BYTES_MAX = 200


class NoPlace(ValueError):
    """A pair the layout cannot name a file for: the reason says which id and why."""


@dataclass(frozen=True)
class Pair:
    """What a layout names a file by: the pair's key, category, id and its record's own fields."""

    key: str
    category: str
    pair_id: str
    fields: Mapping[str, object]


@dataclass(frozen=True)
class Layout:
    name: str
    described: str
    extensions: tuple[str, ...]  # the first is what export writes; all are read by --edits
    image_format: str  # what export writes: PIL's format name
    stem: Callable[[Pair], list[str]]  # the edit's path under the folder, without extension
    source_suffix: str = ""  # the scorer reads the input image at <stem><source_suffix>.png

    def source_name(self, stem: PurePosixPath) -> PurePosixPath | None:
        return stem.with_name(f"{stem.name}{self.source_suffix}.png") if self.source_suffix else None


def _field(pair: Pair, name: str, layout: str) -> str:
    value = pair.fields.get(name)
    if value is None or isinstance(value, (dict, list)):
        raise NoPlace(f"the {layout} layout names an edit by the record's {name}, and this pair's record "
                      f"has {'none' if value is None else 'no plain value there'}")
    return str(value)


def _gedit(pair: Pair) -> list[str]:
    return ["fullset", *(_field(pair, name, "gedit") for name in ("task_type", "instruction_language", "key"))]


LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    Layout("gedit", "GEdit-Bench's scorer: fullset/<task_type>/<instruction_language>/<key>.png and "
                    "<key>_SRCIMG.png", (".png",), "PNG", _gedit, source_suffix="_SRCIMG"),
    Layout("kris", "KRIS-Bench's scorer: <category>/<id>.jpg", (".jpg",), "JPEG",
           lambda pair: [pair.category, pair.pair_id]),
    Layout("imgedit", "ImgEdit-Bench's scorer: <id>.png", (".png",), "PNG", lambda pair: [pair.pair_id]),
    Layout("rise", "RISEBench's scorer: images/<category>/<index>.png", (".png", ".jpg", ".jpeg"), "PNG",
           lambda pair: ["images", pair.category, pair.pair_id]),
    Layout("flat", "one folder of <pair id>.png (or .jpg, .jpeg, .webp)", (".png", ".jpg", ".jpeg", ".webp"),
           "PNG", lambda pair: [pair.pair_id]),
)}
# The layouts a benchmark's own scorer reads: export writes these.
EXPORT_LAYOUTS = ("gedit", "kris", "imgedit", "rise")


def layout_for(name: str, benchmark_format: str) -> Layout:
    """The named layout, or (none named) the benchmark's own format's, else flat."""
    if not name:
        name = benchmark_format if benchmark_format in EXPORT_LAYOUTS else "flat"
    return LAYOUTS[name]


def placements(layout: Layout, pairs: Iterable[Pair]) -> dict[str, PurePosixPath | str]:
    """key -> the edit's path under the folder without extension, or why the pair has none
    (an id that is no file name; two pairs given one name: each says which other)."""
    out: dict[str, PurePosixPath | str] = {}
    owners: dict[PurePosixPath, list[str]] = {}
    for pair in pairs:
        try:
            stem = _relative(layout.stem(pair))
        except NoPlace as exc:
            out[pair.key] = str(exc)
            continue
        out[pair.key] = stem
        owners.setdefault(stem, []).append(pair.key)
    for stem, keys in owners.items():
        if len(keys) > 1:
            for key in keys:
                others = ", ".join(repr(k) for k in keys if k != key)
                out[key] = (f"the {layout.name} layout names {stem}{layout.extensions[0]} for this pair and "
                            f"for {others}: it cannot tell them apart")
    return out


def _relative(parts: list[str]) -> PurePosixPath:
    """Each part a plain file name (a "/" inside an id makes folders: GEdit's en/key)."""
    names = [name for part in parts for name in str(part).split("/")]
    for name in names:
        if name in ("", ".", "..") or "\\" in name or "\0" in name:
            raise NoPlace(f"{'/'.join(map(str, parts))!r} is no file name (an empty part, '.', '..' or a "
                          "backslash)")
        if len(name.encode("utf-8", "surrogatepass")) > NAME_BYTES_MAX:
            raise NoPlace(f"{name[:40]!r}... is longer than {NAME_BYTES_MAX} bytes: no file name")
    return PurePosixPath(*names)
