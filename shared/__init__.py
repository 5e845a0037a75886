"""Torch-free code of the jobs' records, below both sides of the fleet.

Some of it both the producer and the workers import (task names and stages, item keys, the
Redis run store, result schemas, artifacts, image checks, prompt templates and rubrics); some
serves one side, but belongs to a record rather than to a process: input validation and
preparation and JSON files (the producer), the relation prompt and judge-answer parsing (the
workers). What belongs to one job is in its folder, ``shared/relations/`` or
``shared/editbench/``. Nothing here imports torch, the producer or the workers.
"""
