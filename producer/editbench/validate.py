"""``python -m producer validate editbench FILE``: what a benchmark file holds and what is wrong
with it, read exactly as a run reads it, with nothing registered or written."""

from __future__ import annotations

import re
from pathlib import Path

from shared.editbench.data import SHAPES, PreparedBenchmark
from shared.keys import KEY_SEP

# The failure key of a whole category (or of a JSON line naming no usable category): "<c>|*",
# made unique as "<c>|*#2".
_WHOLE = re.compile(r"\*(#\d+)?")


def category_counts(prepared: PreparedBenchmark) -> dict[str, dict[str, int | bool]]:
    """Per category of the file: usable pairs, pairs with a problem, whether it failed whole."""
    counts: dict[str, dict[str, int | bool]] = {
        c: {"usable": 0, "problems": 0, "failed_whole": False} for c in prepared.categories}
    for pair in prepared.pairs:
        counts[pair.category]["usable"] += 1
    for key in prepared.failures:
        category, _, pair_id = key.partition(KEY_SEP)
        if category not in counts:
            continue  # a name unusable in a key, or a JSON line without a usable category
        if _WHOLE.fullmatch(pair_id):
            counts[category]["failed_whole"] = True
        else:
            counts[category]["problems"] += 1
    return counts


def format_validation(path: str | Path, prepared: PreparedBenchmark) -> str:
    counts = category_counts(prepared)
    usable = len(prepared.pairs)
    lines = [f"{path}: {'shape' if prepared.shape in SHAPES else 'format'} {prepared.shape} ({prepared.described})",
             f"{len(prepared.categories)} categories, {usable} usable pairs, "
             f"{len(prepared.failures)} problems", "",
             f"  {'category':<20}{'usable':>8}{'problems':>10}"]
    for name, count in counts.items():
        problems = "whole" if count["failed_whole"] else str(count["problems"])
        lines.append(f"  {name:<20}{count['usable']:>8}{problems:>10}")
    if prepared.failures:
        lines += ["", "problems:"]
        lines += [f"  {key}: {reason}" for key, reason in prepared.failures.items()]
    else:
        lines += ["", "no problems"]
    return "\n".join(lines)
