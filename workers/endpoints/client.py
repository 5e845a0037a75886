"""One OpenAI-compatible endpoint of a run, as a job's workers call it: the API key from the
variable the run names, requests ``concurrency`` at a time (chat_requests.py bounds and retries
each), and every failure as a reason a user can act on: which endpoint and model, what it sent
(its first bytes), how many attempts were made. The key and the URL's password are never in
a reason or a log line (shared/redaction.py)."""

from __future__ import annotations

import base64
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from config.settings import api_key_env_problem, looks_like_variable_name
from shared.redaction import MASK, add_secret, add_url_secrets, redact, without_password
from workers.endpoints.chat_completion import NotAChatCompletion, parse_chat_completion
from workers.endpoints.chat_requests import ChatCompletions, EndpointError
from workers.errors import PermanentError

# How much of an answer that is not a chat completion a failure shows.
FIRST_BYTES = 200
# What a server without authentication is sent (the client requires some key).
NO_KEY = "none"


class EndpointFailure(Exception):
    """A request that got no usable answer after ``attempts`` attempts; the message is the
    reason to show, redacted."""

    def __init__(self, reason: str, attempts: int):
        super().__init__(reason)
        self.attempts = attempts


@dataclass(frozen=True)
class Completion:
    """A chat completion (parsed JSON), its body as sent, and the attempts it took."""

    response: dict[str, Any]
    body: bytes
    attempts: int


class EndpointClient:
    """Chat completions of ``model`` at ``base_url``, named ``what`` in reasons ("the judge
    endpoint"); ``setting`` is the settings' name of the endpoint (``JUDGE_ENDPOINT``)."""

    def __init__(self, base_url: str, model: str, *, what: str, setting: str, api_key_env: str,
                 concurrency: int, timeout_seconds: float, max_retries: int) -> None:
        self.base_url, self.model, self.what = base_url, model, what
        self.concurrency = concurrency
        api_key = _api_key(api_key_env, what, setting)
        # Whatever the server echoes (the key in a 401, the URL), reasons and logs go without them.
        add_url_secrets(base_url)
        if api_key_env:
            add_secret(api_key)
        self.completions = ChatCompletions(base_url, api_key, timeout_seconds=timeout_seconds,
                                           max_retries=max_retries, setting=setting)
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=setting.lower())

    @property
    def where(self) -> str:
        return f"{self.what} {without_password(self.base_url)} (model {self.model!r})"

    def send(self, request: dict[str, Any]) -> Completion:
        """The chat completion answering ``request``; EndpointFailure (after the retries) otherwise."""
        try:
            reply = self.completions.create({"model": self.model, **request})
        except EndpointError as exc:
            raise EndpointFailure(redact(f"{self.where} failed after {exc.attempts} attempt(s): {exc}"),
                                  exc.attempts) from None
        try:
            response = parse_chat_completion(reply.body)
        except NotAChatCompletion as exc:
            raise EndpointFailure(self.answer_problem(f"sent something that is not a chat completion ({exc})",
                                                      reply.body), reply.attempts) from None
        return Completion(response, reply.body, reply.attempts)

    def submit(self, request: dict[str, Any]) -> Future[Completion]:
        """``send(request)`` on one of the ``concurrency`` threads; requests go out in the order given."""
        return self.pool.submit(self.send, request)

    def answer_problem(self, problem: str, body: bytes) -> str:
        """The reason of an answer that cannot be used: where, what is wrong with it, its first bytes."""
        return redact(f"{self.where} {problem}; its first bytes: {body[:FIRST_BYTES]!r}")


def data_url(data: bytes, mime_type: str) -> str:
    """``data`` as a data URL: how an image travels in a chat-completions request."""
    return f"data:{mime_type};base64," + base64.b64encode(data).decode("ascii")


def endpoint_url(stored: str, own: str, setting: str) -> str:
    """The run's endpoint URL, with its password: the run stores it without one (``**``), and
    this worker's own EVALFLEET_<setting>_URL gives it back when it is the same URL."""
    if urlsplit(stored).password != MASK:
        return stored
    if own and without_password(own) == stored:
        return own
    raise PermanentError(f"the run's endpoint {stored} wants a password, which is not stored with "
                         f"the run: set EVALFLEET_{setting}_URL to that URL with its password where "
                         "the workers run")


def _api_key(variable: str, what: str, setting: str) -> str:
    if not variable:
        return NO_KEY
    if not looks_like_variable_name(variable):
        raise KeyError(api_key_env_problem(setting))  # a run registered before the producer checked it
    key = os.environ.get(variable)
    if not key:
        # Names the variable, never a value.
        raise KeyError(f"{what}'s API key variable {variable} is not set in this "
                       "worker's environment: set it where the workers run")
    return key
