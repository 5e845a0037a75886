"""The secrets a process knows, kept out of every reason, log line and report.

The secrets are the passwords in the Redis, endpoint and artifact-root URLs, the endpoints' API
keys (the values of the variables the settings name), Flower's and Redis's passwords where they
are in the environment (``FLOWER_BASIC_AUTH``, ``REDIS_PASSWORD``, docker-compose.yml) and an
object store's secret key and session token (``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``). Each process
adds the ones it learns (settings at start, a run's endpoint when it makes the judge);
``redact`` replaces each by ``**`` wherever it appears, whoever wrote it: a server that echoes
the key in its error message does not get it into the report, the terminal or Redis.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "**"
# Passwords other programs of a deployment read from the environment.
PASSWORD_VARIABLES = ("REDIS_PASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
BASIC_AUTH_VARIABLES = ("FLOWER_BASIC_AUTH",)  # user:password[,user:password...]

_secrets: set[str] = set()
_lock = threading.Lock()


def add_secret(value: str | None) -> None:
    """Redact ``value`` from now on (nothing for an empty value)."""
    if value:
        with _lock:
            _secrets.add(value)


def add_url_secrets(url: str | None) -> None:
    """Redact the password of ``url``: as written, decoded, and as sent in a Basic
    ``Authorization`` header (base64 of user:password)."""
    parts = urlsplit(url or "")
    if not parts.password:
        return
    add_secret(parts.password)
    add_secret(unquote(parts.password))
    add_secret(base64.b64encode(f"{unquote(parts.username or '')}:{unquote(parts.password)}".encode()).decode())


def add_settings_secrets(settings: Any, environ: Mapping[str, str] | None = None) -> None:
    """Redact the secrets the settings and the environment hold (see the module's doc)."""
    environ = os.environ if environ is None else environ
    for url in (settings.broker_url, settings.result_url, settings.judge_endpoint_url,
                settings.relations_endpoint_url, settings.artifact_root):
        add_url_secrets(url)
    for variable in (settings.judge_endpoint_api_key_env, settings.relations_endpoint_api_key_env):
        if variable:
            add_secret(environ.get(variable))
    for name in PASSWORD_VARIABLES:
        add_secret(environ.get(name))
    for name in BASIC_AUTH_VARIABLES:
        for credentials in environ.get(name, "").split(","):
            add_secret(credentials.partition(":")[2])


def redact(text: str) -> str:
    """``text`` with every known secret replaced by ``**`` (longest first: a secret inside
    another leaves nothing of the longer one)."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def redact_values(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings) with every string, key or value, redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_values(k): redact_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_values(v) for v in value]
    return value


def without_password(url: str) -> str:
    """``url`` with its password (if any) shown as ``**``: what may be stored and shown."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:{MASK}@{host}"))


class RedactingFilter(logging.Filter):
    """Redacts a record's message, traceback and stack, whoever logs it (a handler's filter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # a malformed record: the handler reports it, as without this filter
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def redact_logs(logger: logging.Logger | None = None) -> None:
    """Put the redacting filter on each handler of ``logger`` (the root logger by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
