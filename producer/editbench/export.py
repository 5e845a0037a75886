"""``export editbench --run NAME --layout L DIR``: a run's edits written where a public
benchmark's own scorer reads them (``producer/editbench/edit_layouts.py``), so that its official
script runs on them as they are.

Every file is written atomically (a reader sees none or all of it). Pairs without an edit (it
failed, the layout has no name for it) are listed in the output and in
``DIR/evalfleet_export.json``, never left out in silence; a file already at such a pair's place
(an earlier export's) would be scored as this run's, so the export refuses to start then.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image, UnidentifiedImageError

from producer.editbench.edit_layouts import LAYOUTS, Layout, Pair, placements
from producer.job import ExportError
from shared.artifacts import write_atomic
from shared import storage
from shared.files import UnreadableFile
from shared.images import ImageFileError, image_from_bytes
from shared.jsonio import write_json_atomic
from shared.messages import EDIT_STAGE
from shared.store import RunStore

log = logging.getLogger(__name__)

MANIFEST = "evalfleet_export.json"
JPEG_QUALITY = 95


@dataclass
class Export:
    layout: str
    directory: Path
    written: list[str] = field(default_factory=list)  # the edits' files, relative to the directory
    not_exported: list[dict[str, str]] = field(default_factory=list)  # key, category, pair_id, reason

    def record(self, run_id: str) -> dict[str, Any]:
        return {"run": run_id, "layout": self.layout, "scorer": LAYOUTS[self.layout].described,
                "exported": len(self.written), "not_exported": self.not_exported}


def export_edits(store: RunStore, layout_name: str, directory: Path) -> Export:
    """Write the run's edits (and, for GEdit, the input images) into ``directory`` as
    ``layout_name``'s scorer reads them; raises ExportError before writing anything if a file
    there would stand for a pair this run has no edit of."""
    layout, directory = LAYOUTS[layout_name], Path(directory)
    items = store.items(EDIT_STAGE)
    edited, failed = store.done(EDIT_STAGE), store.failed(EDIT_STAGE)
    ordered = sorted(items.items(), key=lambda kv: kv[1].get("order", -1))
    places = placements(layout, [Pair(key, item["category"], item["pair_id"], item.get("fields", {}))
                                 for key, item in ordered if not item.get("invalid")])
    export = Export(layout_name, directory)
    writes = []
    for key, item in ordered:
        place = places.get(key, "")
        reason = _no_edit(key, edited, failed) or (place if isinstance(place, str) else "")
        if reason:
            export.not_exported.append({"key": key, "category": item.get("category", ""),
                                        "pair_id": item.get("pair_id", ""), "reason": reason})
            if isinstance(place, PurePosixPath):
                _refuse_stale(directory, layout, place, key)
        else:
            writes.append((key, item, edited[key]["edited_path"], place))
    for key, item, edited_path, place in writes:
        problem = _write_pair(directory, layout, item, edited_path, place)
        if problem:
            export.not_exported.append({"key": key, "category": item["category"], "pair_id": item["pair_id"],
                                        "reason": problem})
        else:
            export.written.append(f"{place}{layout.extensions[0]}")
    write_json_atomic(directory / MANIFEST, export.record(store.run_id))
    log.info("exported %d edits of run %s as %s into %s; %d not exported", len(export.written),
             store.run_id, layout_name, directory, len(export.not_exported))
    return export


def _no_edit(key: str, edited: dict, failed: dict) -> str:
    if key in edited:
        return ""
    if key in failed:
        return f"no edit: {failed[key]['reason']}"
    return "no edit: the run has not edited this pair (yet)"


def _refuse_stale(directory: Path, layout: Layout, place: PurePosixPath, key: str) -> None:
    for extension in layout.extensions:
        stale = directory / f"{place}{extension}"
        if stale.exists():
            raise ExportError(f"{stale} is there already, and this run has no edit of {key!r}: the "
                              f"{layout.name} scorer would score that file as this run's; remove it, or "
                              "export into an empty folder (nothing was written)")


def _write_pair(directory: Path, layout: Layout, item: dict, edited: str, place: PurePosixPath) -> str:
    """Write one pair's files; what went wrong with its images, or ""."""
    try:
        write_atomic(directory / f"{place}{layout.extensions[0]}", image_as(edited, layout.image_format))
        source = layout.source_name(place)
        if source is not None:
            write_atomic(directory / source, image_as(item["original_path"], "PNG"))
    except (ImageFileError, UnreadableFile, storage.StorageError) as exc:
        return f"not exported: {exc}"
    return ""


def image_as(location: str, image_format: str) -> bytes:
    """The image's bytes (a file's or an object's) in ``image_format``: as they are when the image
    is in that format already (an edit is exported bit for bit), else decoded as shown and encoded."""
    data = storage.read_bytes(location)
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format == image_format:
                return data
    except (UnidentifiedImageError, OSError):
        pass  # image_from_bytes says what is wrong with it
    buf = io.BytesIO()
    options = {"quality": JPEG_QUALITY} if image_format == "JPEG" else {}
    image_from_bytes(data, location).save(buf, format=image_format, **options)
    return buf.getvalue()


def format_export(export: Export) -> str:
    """What ``export`` prints: where the edits went, and each pair not exported with why."""
    lines = [f"{len(export.written)} edits written into {export.directory} "
             f"({LAYOUTS[export.layout].described}); list: {export.directory / MANIFEST}"]
    if export.not_exported:
        lines.append(f"{len(export.not_exported)} not exported:")
        lines += [f"  {entry['key']}: {entry['reason']}" for entry in export.not_exported]
    return "\n".join(lines)
