"""``run editbench --edits DIR [--layout L]``: judge edits made elsewhere (another tool, a hosted
model) instead of editing. Each pair's edit is looked for where the layout names it
(``producer/editbench/edit_layouts.py``; the same layouts ``export`` writes, so an exported
folder is read back as it was written); a pair with none fails alone, naming the path(s) looked
at. The edits are copied into the run's artifacts (the run keeps what it judged), and their
digests are part of the run's identity: another edit is another run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from config import ENV_PREFIX, Settings, SettingsError
from producer.editbench.edit_layouts import LAYOUTS, Layout, Pair, layout_for, placements
from shared import storage
from shared.artifacts import sha256_bytes
from shared.editbench.data import BenchmarkPair
from shared.files import UnreadableFile, read_bytes
from shared.keys import file_digest
from shared.messages import EDIT_STAGE
from shared.store import RunStore


@dataclass
class ExternalEdits:
    directory: Path
    layout: Layout
    found: dict[str, Path] = field(default_factory=dict)  # key -> the edit's file
    digests: dict[str, str] = field(default_factory=dict)  # key -> its sha256 when it was found
    missing: dict[str, str] = field(default_factory=dict)  # key -> why the pair has none

    def identity(self) -> dict[str, Any]:
        """What of the edits changes scores: their layout and contents (not the folder's place)."""
        h = hashlib.sha256()
        for key in sorted(set(self.found) | set(self.missing)):
            h.update(key.encode("utf-8", "surrogatepass") + b"\0" + self.digests.get(key, "-").encode() + b"\0")
        return {"edits": {"layout": self.layout.name, "digest": h.hexdigest()[:16]}}

    def record(self) -> dict[str, Any]:
        return {**self.identity(), "edits_dir": str(self.directory), "editor": external_editor(self.directory)}


def external_editor(directory: Path | str) -> str:
    """What the report's ``editor`` says of a run of edits made elsewhere."""
    return f"external ({directory})"


def editor_summary(meta: dict[str, Any]) -> str:
    """The report's one-line ``editor``: the editor model, or where edits made elsewhere came from."""
    return meta.get("editor") or meta.get("editor_model", "")


def check_edits_settings(settings: Settings) -> None:
    """--edits is a folder, --layout one of the layouts and only given with it, no LoRA with it."""
    if settings.edits_layout and settings.edits_layout not in LAYOUTS:
        raise SettingsError(f"{ENV_PREFIX}EDITS_LAYOUT={settings.edits_layout!r} (--layout): use one of "
                            f"{', '.join(LAYOUTS)}")
    if settings.edits_layout and not settings.edits_dir:
        raise SettingsError("--layout (EVALFLEET_EDITS_LAYOUT) is the layout of the edits of --edits DIR "
                            "(EVALFLEET_EDITS_DIR), which is not given")
    if settings.edits_dir and not Path(settings.edits_dir).is_dir():
        raise SettingsError(f"--edits {settings.edits_dir} (EVALFLEET_EDITS_DIR): not a folder")
    if settings.edits_dir and settings.editor_loras:
        raise SettingsError("--lora (EVALFLEET_EDITOR_LORAS) changes the editor, and with --edits "
                            f"{settings.edits_dir} nothing is edited: give one of them")


def find_edits(settings: Settings, benchmark_format: str, pairs: Iterable[BenchmarkPair]) -> ExternalEdits | None:
    """Each pair's edit in the folder of --edits, or why it has none; None without --edits."""
    if not settings.edits_dir:
        return None
    directory = Path(settings.edits_dir).resolve()
    edits = ExternalEdits(directory, layout_for(settings.edits_layout, benchmark_format))
    places = placements(edits.layout, [Pair(p.key, p.category, p.pair_id, p.fields) for p in pairs])
    for key, place in places.items():
        if isinstance(place, str):
            edits.missing[key] = f"no edit in {directory}: {place}"
            continue
        candidates = [directory / f"{place}{extension}" for extension in edits.layout.extensions]
        found = next((path for path in candidates if path.is_file()), None)
        if found is not None:
            edits.found[key], edits.digests[key] = found, file_digest(found)
        else:
            edits.missing[key] = (f"no edit at {' or '.join(str(c) for c in candidates)} "
                                  f"(--edits {directory}, layout {edits.layout.name})")
    return edits


def mark_external_edits(store: RunStore, items: dict[str, dict[str, Any]], edits: ExternalEdits) -> None:
    """Each found edit copied into the run's artifacts and its pair's edit done; each missing
    one's pair failed with the reason."""
    for key, source in edits.found.items():
        try:
            data = read_bytes(source)
        except UnreadableFile as exc:
            store.mark_failed(EDIT_STAGE, key, f"edit made elsewhere: {exc}")
            continue
        if sha256_bytes(data) != edits.digests[key]:  # the run's identity has the digest it was found with
            store.mark_failed(EDIT_STAGE, key, f"the edit {source} changed while the run was registered; "
                                               "run the command again")
            continue
        target = items[key]["edited_path"].removesuffix(".png") + source.suffix.lower()
        store.mark_done(EDIT_STAGE, key, {"edited_path": target, "edited_digest": storage.write_once(target, data),
                                          "external": str(source)})
    for key, reason in edits.missing.items():
        store.mark_failed(EDIT_STAGE, key, reason)
