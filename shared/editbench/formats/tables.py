"""Parquet and Arrow files, as a Hugging Face dataset download leaves them: rows of a table,
images inside the file as ``{"bytes", "path"}`` structs. Read through pyarrow, an optional
dependency (``pip install 'evalfleet[benchmarks]'``); a file of a store is read whole into
memory (its images would be anyway)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from shared import storage
from shared.errors import InputFileError

TABLE_SUFFIXES = (".parquet", ".arrow")
# Rows converted to Python at a time: a shard of 600 images is read without holding all of it twice.
BATCH_ROWS = 64


def is_table(path: str | Path) -> bool:
    return storage.suffix(path).lower() in TABLE_SUFFIXES


def table_files(directory: str | Path) -> list[str | Path]:
    """The parquet or arrow shards under ``directory`` (local, or a store's folder), in name order
    (train-00000-of-00002 first)."""
    if storage.is_url(directory):
        return [url for url in storage.list_under(directory) if is_table(url)]
    return sorted(p for p in Path(directory).rglob("*") if is_table(p) and p.is_file())


def _pyarrow(path: Path):
    try:
        import pyarrow  # noqa: F401
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise InputFileError(path, "reading parquet or arrow files needs pyarrow: "
                                   "pip install 'evalfleet[benchmarks]' (or pip install pyarrow)") from None
    return pyarrow


def column_names(path: str | Path) -> list[str]:
    pa = _pyarrow(path)
    try:
        if storage.suffix(path).lower() == ".parquet":
            return list(pa.parquet.read_schema(_source(pa, path)).names)
        return list(_arrow_reader(pa, path).schema.names)
    except (OSError, pa.ArrowException) as exc:
        raise InputFileError(path, f"not a readable {storage.suffix(path)[1:]} file ({exc})") from None


def table_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Each row of the file as a dict (an image column's value a ``{"bytes", "path"}`` dict)."""
    pa = _pyarrow(path)
    try:
        if storage.suffix(path).lower() == ".parquet":
            batches = pa.parquet.ParquetFile(_source(pa, path)).iter_batches(batch_size=BATCH_ROWS)
        else:
            batches = iter(_arrow_reader(pa, path))
        for batch in batches:
            yield from batch.to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise InputFileError(path, f"not a readable {storage.suffix(path)[1:]} file ({exc})") from None


def _source(pa, path: str | Path, mapped: bool = False):
    """What pyarrow reads: a local file (by name, or ``mapped`` in memory), or an object's bytes
    (fetched once: see storage.reads_held; StorageError names an object that cannot be read)."""
    if storage.is_url(path):
        return pa.BufferReader(storage.read_bytes(path))
    return pa.memory_map(str(path)) if mapped else str(path)


def _arrow_reader(pa, path: str | Path):
    """An arrow file's batches: the stream format a datasets cache writes, or the file format."""
    try:
        return pa.ipc.open_stream(_source(pa, path, mapped=True))
    except pa.ArrowInvalid:
        return pa.ipc.open_file(_source(pa, path, mapped=True))
