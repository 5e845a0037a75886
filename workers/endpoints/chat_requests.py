"""Chat-completions requests to an OpenAI-compatible endpoint (the judge's and the relations
job's), each bounded as a whole and retried as the README says.

The ``openai`` client's timeout bounds each connect, read and write, not the request: a server
that sends a byte every few seconds would hold a request forever. So each attempt runs in its
own thread with its own client, and is given up at ``timeout_seconds``: the client is closed,
which ends the thread at its next read (its idle connections are reused otherwise). The
client's own retries are off, since they can be neither counted nor bounded one by one: an
attempt that timed out, lost its connection or got 408, 409, 429 or 5xx is retried here,
``max_retries`` times, with the client's back-off (0.5 s doubling up to 8 s, less up to 25%)
or the server's ``Retry-After`` when it asks for at most 60 s; a server asking for longer is
not waited for.
"""

from __future__ import annotations

import email.utils
import math
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import openai

RETRIED_STATUSES = frozenset({408, 409, 429})  # and every 5xx
MAX_RETRY_AFTER = 60.0
INITIAL_BACKOFF, MAX_BACKOFF = 0.5, 8.0


class EndpointError(Exception):
    """A request that failed for good, after ``attempts`` attempts; the message is the last one's reason."""

    def __init__(self, reason: str, attempts: int):
        super().__init__(reason)
        self.attempts = attempts


class _Failed(Exception):
    """One attempt that failed: why, and whether (and after how long) to try again."""

    def __init__(self, reason: str, retryable: bool = False, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retryable, self.retry_after = reason, retryable, retry_after


@dataclass(frozen=True)
class Reply:
    """The body of a 2xx answer, and how many attempts it took (1: no retry)."""

    body: bytes
    attempts: int


class ChatCompletions:
    """``create(request)``: the endpoint's answer to one chat-completions request.

    ``setting`` is the settings' name of this endpoint (``JUDGE_ENDPOINT``): messages name its
    timeout setting, and the request threads are named after it."""

    def __init__(self, base_url: str, api_key: str, *, timeout_seconds: float, max_retries: int,
                 setting: str) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.timeout_seconds = timeout_seconds
        self.max_retries = max_retries
        self.setting = setting
        self._idle: queue.SimpleQueue[openai.OpenAI] = queue.SimpleQueue()

    def create(self, request: dict[str, Any]) -> Reply:
        """The answer of the first attempt that got a 2xx answer; EndpointError otherwise."""
        for attempt in range(1, self.max_retries + 2):
            try:
                return Reply(self._attempt(request), attempt)
            except _Failed as failed:
                wait = _backoff(attempt) if failed.retry_after is None else failed.retry_after
                if not failed.retryable or attempt > self.max_retries:
                    raise EndpointError(failed.reason, attempt) from None
                if wait > MAX_RETRY_AFTER:
                    raise EndpointError(f"{failed.reason} (it asks to retry after {wait:g} s: more than "
                                        f"{MAX_RETRY_AFTER:g} s, not waited for)", attempt) from None
                time.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _attempt(self, request: dict[str, Any]) -> bytes:
        client = self._client()
        outcome: list[Any] = []
        thread = threading.Thread(target=_send, args=(client, request, outcome), daemon=True,
                                  name=f"{self.setting.lower().replace('_', '-')}-request")
        thread.start()
        thread.join(self.timeout_seconds)
        if thread.is_alive():
            client.close()  # its connections close: the thread ends at its next read
            raise _Failed(f"no whole answer within {self.timeout_seconds:g} s "
                          f"(EVALFLEET_{self.setting}_TIMEOUT_SECONDS bounds each request)", retryable=True)
        self._idle.put(client)
        [result] = outcome
        if isinstance(result, BaseException):
            raise _failure(result)
        return result

    def _client(self) -> openai.OpenAI:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return openai.OpenAI(base_url=self.base_url, api_key=self.api_key,
                                 timeout=self.timeout_seconds, max_retries=0)


def _send(client: openai.OpenAI, request: dict[str, Any], outcome: list[Any]) -> None:
    try:
        outcome.append(client.chat.completions.with_raw_response.create(**request).http_response.content)
    except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which decides
        outcome.append(exc)


def _failure(exc: BaseException) -> _Failed | BaseException:
    """An attempt's failure, from the client's exception; anything but an API error is a bug."""
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        return _Failed(f"{type(exc).__name__}: {exc}", retryable=status in RETRIED_STATUSES or status >= 500,
                       retry_after=retry_after(exc.response.headers))
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        detail = f" ({type(cause).__name__}: {cause})" if cause is not None and str(cause) else ""
        return _Failed(f"{type(exc).__name__}: {exc}{detail}", retryable=True)
    if isinstance(exc, openai.APIError):
        return _Failed(f"{type(exc).__name__}: {exc}")
    return exc


def retry_after(headers: Any) -> float | None:
    """Seconds the server asks to wait (``retry-after-ms``, ``retry-after`` in seconds or as a
    date); None when it asks nothing readable."""
    for name, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        try:
            seconds = float(headers.get(name)) / divisor
        except (TypeError, ValueError):
            continue
        if not math.isnan(seconds):
            return max(seconds, 0.0)
    try:
        return max(email.utils.mktime_tz(email.utils.parsedate_tz(headers.get("retry-after"))) - time.time(), 0.0)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _backoff(attempt: int) -> float:
    return min(INITIAL_BACKOFF * 2 ** (attempt - 1), MAX_BACKOFF) * (1 - 0.25 * random.random())
