"""A Celery app whose relations tasks decode with the slot decoder (bench/slot_decoder.py), the
benchmarks' baseline, where the product's workers decode with the paged engine; everything else
is the product's worker. ``bench.harness.slot_fleet`` starts one, as
``celery -A bench.slot_worker worker -Q relations ...``."""

from __future__ import annotations

from bench.slot_decoder import SlotDecoder
from workers import app
from workers.relations import generator

# Set before the worker forks its children: every generator they make decodes with it.
generator.DECODER = SlotDecoder

__all__ = ["app"]
