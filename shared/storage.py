"""Reading and writing a run's files by location: a local path, or an object-store URL.

A location is a path (``/data/artifacts/run/x.png``) or a URL that fsspec serves
(``s3://bucket/prefix/run/x.png`` through s3fs, the ``[s3]`` extra; ``gs://``, ``az://`` through
their own fsspec packages). Local paths go through the local helpers (``shared/files.py``'s
checked reads, ``shared/artifacts.py``'s atomic writes), exactly as without this module.

For a URL:

- credentials come from the store's own standard variables and files (for S3:
  ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_PROFILE`` and
  ``~/.aws``), read by the store's client; nothing here stores, logs or prints them;
- ``write_once`` puts the whole object in one request (an S3 PUT is atomic: readers see no
  object or all of it) with ``If-None-Match: *``, so of two executions of a task the first
  object stays and the second learns its digest. A store that ignores the condition (an old
  S3-compatible server) lets the last PUT win instead: each is still whole, but the digest a
  first writer recorded may then name bytes no longer there;
- digests are the sha256 of the bytes, computed by whoever wrote or read them; no ETag is used
  (a multipart upload's ETag is no digest of the content, and stores differ);
- every failure is a StorageError whose message names the URL (its password, if any, hidden)
  and the store's answer.

An input file (a relations input, a benchmark) may be a URL too: ``parent``, ``name``,
``suffix`` and ``resolve_under`` are its path operations, so the paths inside it resolve
against its own location, local or remote; ``is_folder`` and ``list_under`` read a folder
layout from a store.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import posixpath
import re
import shutil
import uuid
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

from shared.artifacts import sha256_bytes
from shared.artifacts import write_once as write_file_once
from shared.files import read_bytes as read_file
from shared.redaction import add_url_secrets, redact, without_password

log = logging.getLogger(__name__)

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
# Answers of a store that a later attempt may not get (HTTP status codes).
_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
# The objects read within ``reads_held`` (URL -> bytes); None outside it.
_held: contextvars.ContextVar[dict[str, bytes] | None] = contextvars.ContextVar("held_reads", default=None)


class StorageError(Exception):
    """A location cannot be read or written; the message names it and gives the store's answer."""

    def __init__(self, location: str, doing: str, answer: str):
        super().__init__(redact(f"{without_password(location)}: {doing}: {answer}"))
        self.location = without_password(location)


class ObjectMissing(StorageError):
    """No object (or no bucket) at the URL."""


class StoreDenied(StorageError):
    """The store refused the credentials, or what they may do."""


class StoreUnreachable(StorageError):
    """The store did not answer, or answered that it cannot now: worth another attempt."""


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and bool(_URL.match(location))


def as_location(text: str | Path) -> str | Path:
    """A file a user names (a command's argument): a URL stays a string, its password (if any)
    redacted from now on wherever it would be shown; anything else is a Path."""
    if is_url(text):
        add_url_secrets(str(text))
        return str(text)
    return Path(text)


def parent(location: str | Path) -> str | Path:
    """The folder ``location`` is in: a URL's (without its query), or a path's, made absolute."""
    if not is_url(location):
        return Path(location).resolve().parent
    parts = urlsplit(str(location))
    return urlunsplit(parts._replace(path=posixpath.dirname(parts.path), query="", fragment=""))


def name(location: str | Path) -> str:
    """The last part of ``location`` (``in.json`` of ``s3://b/runs/in.json?v=2``)."""
    return posixpath.basename(urlsplit(str(location)).path) if is_url(location) else Path(location).name


def suffix(location: str | Path) -> str:
    """The extension of ``location``'s name, as ``Path.suffix`` gives it (``.json``)."""
    return PurePosixPath(name(location)).suffix


def resolve_under(folder: str | Path, path: str) -> str:
    """``path`` (as an input file writes it) relative to ``folder``: ``images/1.png`` under
    ``s3://b/runs`` is ``s3://b/runs/images/1.png``. A URL, or an absolute path (a file of the
    host that reads it), stays as it is."""
    if is_url(path) or Path(path).is_absolute():
        return path
    if not is_url(folder):
        return str(Path(folder) / path)
    parts = urlsplit(str(folder))
    return urlunsplit(parts._replace(path=posixpath.normpath(posixpath.join(parts.path or "/", path)),
                                     query="", fragment=""))


def join(root: str | Path, *names: str) -> str:
    """``root``'s child ``names``: a URL joined with ``/``, a path as a path (made absolute)."""
    if is_url(root):
        return posixpath.join(str(root).rstrip("/"), *names)
    return str(Path(root).resolve().joinpath(*names))


def read_bytes(location: str | Path) -> bytes:
    """The whole content; a local file as ``shared.files.read_bytes`` reads it (UnreadableFile)."""
    if not is_url(location):
        return read_file(location)
    held = _held.get()
    if held is not None and location in held:
        return held[location]
    fs, path = _filesystem(location)
    try:
        data = fs.cat_file(path)
    except Exception as exc:  # noqa: BLE001 - each store's client raises its own kinds
        raise _error(location, "cannot read the object", exc) from None
    if held is not None:
        held[location] = data
    return data


@contextlib.contextmanager
def reads_held():
    """Within the block, each object is fetched once: a later read of its URL gets the bytes of
    the first. An input file is read in several passes (its format, its records, its digest):
    each sees the same version of the object, the one the run's identity names."""
    if _held.get() is not None:
        yield
        return
    token = _held.set({})
    try:
        yield
    finally:
        _held.reset(token)


def write_once(location: str | Path, data: bytes) -> str:
    """Write ``data`` unless something is there already; the sha256 of what stays (the first
    complete write's bytes). A local path: ``shared.artifacts.write_once``."""
    if not is_url(location):
        return write_file_once(Path(location), data)
    fs, path = _filesystem(location)
    try:
        fs.pipe_file(path, data, mode="create")
        return sha256_bytes(data)
    except Exception as exc:  # noqa: BLE001
        if not _already_there(exc):
            raise _error(location, "cannot write the object", exc) from None
    log.info("%s was written already; its first bytes stay", without_password(location))
    return sha256_bytes(read_bytes(location))


def exists(location: str | Path) -> bool:
    if not is_url(location):
        return Path(location).exists()
    fs, path = _filesystem(location)
    try:
        fs.info(path)
        return True
    except FileNotFoundError:
        return False
    except Exception as exc:  # noqa: BLE001
        raise _error(location, "cannot look for the object", exc) from None


def digest(location: str | Path) -> str:
    """The sha256 of the content (read whole: the producer computes it once, at registration)."""
    return sha256_bytes(read_bytes(location))


def is_folder(location: str | Path) -> bool:
    """A local directory, or a URL that names no object but a prefix of some (a folder of a store)."""
    if not is_url(location):
        return Path(location).is_dir()
    fs, path = _filesystem(location)
    try:
        return fs.info(path).get("type") == "directory"
    except FileNotFoundError:
        return False  # reading it says what is missing
    except Exception as exc:  # noqa: BLE001
        raise _error(location, "cannot look for the object", exc) from None


def list_under(location: str | Path) -> list[str]:
    """Every file or object under ``location``, recursively, as locations, sorted."""
    if not is_url(location):
        root = Path(location)
        return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    fs, path = _filesystem(location)
    try:
        return sorted(fs.unstrip_protocol(p) for p in _objects(fs, path))
    except Exception as exc:  # noqa: BLE001
        raise _error(location, "cannot list the objects", exc) from None


def remove_under(location: str | Path) -> None:
    """Delete everything under ``location`` (a run started over); nothing there is no error."""
    if not is_url(location):
        if Path(location).exists():
            shutil.rmtree(location)
        return
    fs, path = _filesystem(location)
    try:
        found = _objects(fs, path)
        if found:
            fs.rm(found)
    except Exception as exc:  # noqa: BLE001
        raise _error(location, "cannot delete the objects", exc) from None


def check_writable(location: str) -> None:
    """An object can be written and deleted under the URL ``location`` (its bucket exists, the
    credentials may write): checked before a run registers anything."""
    probe = join(location, f".evalfleet-probe-{uuid.uuid4().hex}")
    fs, path = _filesystem(probe)
    try:
        fs.pipe_file(path, b"")
    except Exception as exc:  # noqa: BLE001
        raise _error(location, "cannot write under it", exc) from None
    try:
        fs.rm_file(path)
    except Exception as exc:  # noqa: BLE001 - the probe stays; the run can still write
        log.warning("%s", _error(probe, "cannot delete the probe object", exc))


def _filesystem(url: str):
    """The fsspec filesystem serving ``url`` (one per process and protocol, fsspec's cache)
    and the path within it."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise StorageError(url, "no support for this kind of URL is installed",
                           f"{exc} (for s3:// install evalfleet[s3])") from None
    except (ValueError, TypeError) as exc:
        raise StorageError(url, "not a URL fsspec can serve", str(exc)) from None


def _objects(fs, path: str) -> list[str]:
    """The objects under ``path`` (a store may list an emptied folder as a directory entry)."""
    return [name for name, info in fs.find(path, detail=True).items() if info.get("type") == "file"]


def _already_there(exc: BaseException) -> bool:
    """The store refused a conditional write because the object exists (412), or a concurrent
    conditional write of it is under way (409: the other write's object will be there)."""
    if isinstance(exc, FileExistsError):
        return True
    status, code = _client_answer(exc)
    return status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict")


def _error(location: str, doing: str, exc: BaseException) -> StorageError:
    status, _ = _client_answer(exc)
    answer = _answer(exc)
    if isinstance(exc, FileNotFoundError) or status == 404:
        return ObjectMissing(location, doing, answer)
    if isinstance(exc, PermissionError) or status in (401, 403):
        return StoreDenied(location, doing, answer)
    if status in _RETRYABLE_STATUS or (status is None and _no_answer(exc)):
        return StoreUnreachable(location, doing, answer)
    return StorageError(location, doing, answer)


def _no_answer(exc: BaseException) -> bool:
    """No connection, or none in time: builtin ConnectionError or TimeoutError in the chain, or
    a client's own kind of them (botocore's EndpointConnectionError, ReadTimeoutError...)."""
    seen: BaseException | None = exc
    while seen is not None:
        name = type(seen).__name__
        if isinstance(seen, (ConnectionError, TimeoutError)) or "Connect" in name or "Timeout" in name:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _answer(exc: BaseException) -> str:
    """What the store said: its error code and message, else the client's exception."""
    status, code = _client_answer(exc)
    text = str(exc) or type(exc).__name__
    if status is None and isinstance(exc, FileNotFoundError):
        return "no such object"
    if status is None:
        cause = exc.__cause__ or exc.__context__
        return f"{type(exc).__name__}: {text}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
    shown = code and code != str(status) and code not in text  # a HEAD's error has no code but its status
    return f"the store answered {status} {code}: {text}" if shown else f"the store answered {status}: {text}"


def _client_answer(exc: BaseException) -> tuple[int | None, str]:
    """The HTTP status and error code of the S3 client's error in ``exc``'s chain, if any."""
    seen = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            meta = response.get("ResponseMetadata", {})
            return meta.get("HTTPStatusCode"), str(response.get("Error", {}).get("Code", ""))
        seen = seen.__cause__ or seen.__context__
    return None, ""
