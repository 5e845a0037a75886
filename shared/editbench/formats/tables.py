"""Parquet and Arrow files, as a Hugging Face dataset download leaves them: rows of a table,
images inside the file as ``{"bytes", "path"}`` structs. Read through pyarrow, an optional
dependency (``pip install 'evalfleet[benchmarks]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from shared.errors import InputFileError

TABLE_SUFFIXES = (".parquet", ".arrow")
# Rows converted to Python at a time: a shard of 600 images is read without holding all of it twice.
BATCH_ROWS = 64


def is_table(path: Path) -> bool:
    return path.suffix.lower() in TABLE_SUFFIXES


def table_files(directory: Path) -> list[Path]:
    """The parquet or arrow shards under ``directory``, in name order (train-00000-of-00002 first)."""
    return sorted(p for p in directory.rglob("*") if is_table(p) and p.is_file())


def _pyarrow(path: Path):
    try:
        import pyarrow  # noqa: F401
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise InputFileError(path, "reading parquet or arrow files needs pyarrow: "
                                   "pip install 'evalfleet[benchmarks]' (or pip install pyarrow)") from None
    return pyarrow


def column_names(path: Path) -> list[str]:
    pa = _pyarrow(path)
    try:
        if path.suffix.lower() == ".parquet":
            return list(pa.parquet.read_schema(path).names)
        return list(_arrow_reader(pa, path).schema.names)
    except (OSError, pa.ArrowException) as exc:
        raise InputFileError(path, f"not a readable {path.suffix[1:]} file ({exc})") from None


def table_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Each row of the file as a dict (an image column's value a ``{"bytes", "path"}`` dict)."""
    pa = _pyarrow(path)
    try:
        if path.suffix.lower() == ".parquet":
            batches = pa.parquet.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
        else:
            batches = iter(_arrow_reader(pa, path))
        for batch in batches:
            yield from batch.to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise InputFileError(path, f"not a readable {path.suffix[1:]} file ({exc})") from None


def _arrow_reader(pa, path: Path):
    """An arrow file's batches: the stream format a datasets cache writes, or the file format."""
    try:
        return pa.ipc.open_stream(pa.memory_map(str(path)))
    except pa.ArrowInvalid:
        return pa.ipc.open_file(pa.memory_map(str(path)))
