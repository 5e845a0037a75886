"""The approximate edit modes a run was made with, by name (pure Python: producer and workers).

A run's record (its stored settings, ``shared/editbench/run_settings.py``, or its report's
``run``) holds ``edit_fp8`` and ``edit_step_cache`` only when a mode is on, so exact runs keep
the identity and run id they had before these modes existed. Records of any age are read
here: ``status`` and ``compare`` read runs of any evalfleet.
"""

from __future__ import annotations

from typing import Any, Mapping

# The keys of a run's identity that hold approximate modes.
APPROXIMATE_KEYS = ("edit_fp8", "edit_step_cache")


def approximate_modes(record: Mapping[str, Any]) -> list[str]:
    """Names of the modes a run record was made with: [] for an exact run."""
    modes = []
    if record.get("edit_fp8"):
        modes.append("fp8")
    if record.get("edit_step_cache"):
        modes.append(f"step-cache {float(record['edit_step_cache']):g}")
    return modes
