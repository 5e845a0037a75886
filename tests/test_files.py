"""Files a run writes: one per item whatever its id, names within file system limits,
modes that honour the umask (other users of a shared filesystem read the reports)."""

from __future__ import annotations

import itertools
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from shared.artifacts import safe_name, write_once
from shared.jsonio import write_json_atomic
from shared.run_artifacts import ArtifactStore

# Ids chosen to collide under a cleaning that maps unsafe characters to "_" and keeps
# safe ids as they are, or that cuts long ids to a prefix.
TRICKY_IDS = ["a b", "a_b", "a/b", "a\\b", "a:b", ".a", "a.", "a", "_a_", "物理", "物 理", "物_理",
              "x" * 300, "x" * 301, "x" * 300 + "y", "", " ", "..", "item", "a\ud800", "a\udc80"]


def test_safe_names_are_injective_even_against_each_others_cleaned_form():
    ids = TRICKY_IDS + [safe_name(i) for i in TRICKY_IDS]  # an id equal to another id's file name
    names = {}
    for item in ids:
        assert names.setdefault(safe_name(item), item) == item, f"{item!r} and {names[safe_name(item)]!r}"


@pytest.mark.parametrize("pair_id", ["物" * 100, "😀" * 256, "a" * 256, "é" * 256])
def test_an_edited_file_name_stays_within_255_bytes_and_can_be_written(tmp_path, pair_id):
    path = Path(ArtifactStore(tmp_path, "run").edited_path("物" * 256, pair_id))
    assert all(len(part.encode()) <= 255 for part in path.parts)
    write_once(path, b"png bytes")  # the temporary file beside it too
    assert path.read_bytes() == b"png bytes"


def test_two_ids_never_share_an_edited_file(tmp_path):
    store = ArtifactStore(tmp_path, "run")
    paths = {store.edited_path(c, p) for c, p in itertools.product(["c", "c d", "c_d"], TRICKY_IDS)}
    assert len(paths) == 3 * len(TRICKY_IDS)


def _written_under_umask(tmp_path: Path, umask: int) -> dict[str, int]:
    """Modes of a report, a chart and an edit written by a process with this umask."""
    script = (
        "import os, sys, json\n"
        f"os.umask({umask})\n"
        "from pathlib import Path\n"
        "from shared.artifacts import write_atomic, write_once\n"
        "from shared.jsonio import write_json_atomic\n"
        "d = Path(sys.argv[1])\n"
        "write_json_atomic(d / 'report.json', {'a': 1})\n"
        "write_atomic(d / 'chart.png', b'png')\n"
        "write_once(d / 'edited' / 'e.png', b'png')\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return {p: stat.S_IMODE((tmp_path / p).stat().st_mode) for p in ("report.json", "chart.png", "edited/e.png")}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    assert set(_written_under_umask(tmp_path, umask).values()) == {mode}


def test_a_report_with_nan_is_refused_not_written(tmp_path):
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "r.json", {"mean": float("nan")})
    assert list(tmp_path.iterdir()) == []
