"""What an endpoint's answer must be to be read (by the judge, by the relations job): a chat completion, as JSON, whose
first choice has a text message and, when given, logprobs of the documented shape. Anything
else (HTML from a proxy, another API's JSON, no choices, a logprob that is not a number) is
refused with what is wrong, never read half-way into an internal error."""

from __future__ import annotations

import json
import math
from typing import Any

# A logprob is at most 0; rounding may put one a little above.
LOGPROB_SLACK = 1e-3


class NotAChatCompletion(ValueError):
    """The body is not a chat completion; the message says what is wrong."""


def parse_chat_completion(body: bytes) -> dict[str, Any]:
    """The chat completion ``body`` holds (JSON); NotAChatCompletion otherwise."""
    try:
        response = json.loads(body)
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deeply
        raise NotAChatCompletion(f"not JSON: {exc}") from None
    problem = completion_problem(response)
    if problem:
        raise NotAChatCompletion(problem)
    return response


def completion_problem(response: Any) -> str | None:
    """What keeps ``response`` (parsed JSON) from being a chat completion the judge reads; None if nothing."""
    if not isinstance(response, dict):
        return f"a JSON {type(response).__name__}, not an object"
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        return "no choices"
    choice = choices[0]
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        return "its first choice has no message"
    if not isinstance(choice["message"].get("content"), (str, type(None))):
        return "its message's content is not text"
    logprobs = choice.get("logprobs")
    if logprobs is None:
        return None
    if not isinstance(logprobs, dict) or not isinstance(logprobs.get("content"), (list, type(None))):
        return "its logprobs are not an object with a list of tokens"
    tokens = logprobs["content"]
    for index, token in enumerate(tokens or []):
        problem = _token_problem(token, nullable=False) or next(
            (p for p in map(_alternative_problem, _alternatives(token)) if p), None)
        if problem:
            return f"logprobs token {index}: {problem}"
    return None


def _alternatives(token: dict[str, Any]) -> list[Any]:
    """A token's top_logprobs (none given: none; not a list: one that is not an alternative)."""
    alternatives = token.get("top_logprobs")
    if alternatives is None:
        return []
    return alternatives if isinstance(alternatives, list) else [alternatives]


def _alternative_problem(alternative: Any) -> str | None:
    problem = _token_problem(alternative, nullable=True)
    return f"top_logprobs: {problem}" if problem else None


def _token_problem(token: Any, *, nullable: bool) -> str | None:
    if not isinstance(token, dict) or not isinstance(token.get("token"), str):
        return "not an object with a text token"
    logprob = token.get("logprob")
    if logprob is None and nullable:
        return None
    if not is_logprob(logprob):
        return f"logprob {str(logprob)[:40]} is not a number at most 0"
    return None


def is_logprob(value: Any) -> bool:
    """A number from -inf to 0 (within rounding); ints too large for a float are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        value = float(value)
    except OverflowError:
        return False
    return not math.isnan(value) and value <= LOGPROB_SLACK
