"""The judge behind an OpenAI-compatible chat-completions endpoint (vLLM, SGLang, a hosted model).

Each row (one criterion of one pair) is one request: the row's system prompt, then a user
turn with the row's images (the original and the edit by default) as PNG data URLs, in the
order its prompt names them, and the row's user prompt, greedy (temperature 0).
The answer is read in the documented format (shared/editbench/judge_scores.py). When the endpoint
returns ``logprobs`` with ``top_logprobs`` (vLLM, SGLang and OpenAI do when asked), the
score is the expectation over the scale's tokens at the position where the answer states
its score, as the local judge computes it; otherwise it is the stated integer, and the
row's ``source`` says which. 10 is "1" then "0": its share of "1" needs P("0" | "1"), which
the logprobs show only when the answer's digit there is "1"; when they cannot split 1 from 10
the stated integer is used.

No model and no device: a worker scoring through an endpoint needs no GPU. Requests run
``concurrency`` at a time, each bounded as a whole by ``timeout_seconds`` and retried on 408,
409, 429, 5xx, lost connections and timeouts; after the last retry the row fails with the
endpoint's answer and the number of attempts made. The API key is read from the environment
variable the run names and is never logged (workers/endpoints/client.py, shared with the
relations job).
"""

from __future__ import annotations

import io
import logging
import math
from typing import Any, Sequence

from PIL import Image

from config.settings import JUDGE_ENDPOINT
from shared.editbench.judge_scores import (FROM_LOGPROBS, SCORE_MODE_TOKENS, JudgeFailure, JudgeScore, StatedScore,
                                 expectation, find_stated_score, first_digits, scale_probabilities,
                                 stated_score)
from workers.endpoints.chat_completion import completion_problem
from workers.endpoints.client import EndpointClient, EndpointFailure, data_url as encoded_url
from workers.judging.judge import JudgeItem

log = logging.getLogger(__name__)

# As many alternatives per position as OpenAI allows: the scale's 10 digits fit.
TOP_LOGPROBS = 20


class EndpointJudge:
    """Scores rows through ``base_url``'s chat completions with the served ``model``."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str, logprobs: bool,
                 values: Sequence[int], reasoning_tokens: int, concurrency: int,
                 timeout_seconds: float, max_retries: int, stated: bool = False) -> None:
        self.base_url = base_url
        self.model = model
        self.logprobs = logprobs
        self.values = tuple(values)
        self.max_tokens = reasoning_tokens or SCORE_MODE_TOKENS
        self.reasoning = bool(reasoning_tokens)
        self.stated = stated  # the rubric's scoring takes the stated integer, whatever the logprobs say
        self.client = EndpointClient(base_url, model, what="the judge endpoint", setting=JUDGE_ENDPOINT,
                                     api_key_env=api_key_env, concurrency=concurrency,
                                     timeout_seconds=timeout_seconds, max_retries=max_retries)
        self.completions = self.client.completions

    def score(self, items: list[JudgeItem]) -> list[JudgeScore | JudgeFailure]:
        """One result per row, in order; a row that fails (after retries) fails alone."""
        return [self._score_row(row) for row in [self.client.submit(self.request(item)) for item in items]]

    def _score_row(self, sent) -> JudgeScore | JudgeFailure:
        try:
            completion = sent.result()
        except EndpointFailure as exc:
            return JudgeFailure(str(exc))
        return score_from_response(completion.response, self.values, reasoning=self.reasoning,
                                   stated=self.stated)

    def request(self, item: JudgeItem) -> dict[str, Any]:
        """The chat-completions request of one row."""
        request: dict[str, Any] = {
            "model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
            "messages": [
                {"role": "system", "content": item.system_prompt},
                {"role": "user", "content": [
                    *({"type": "image_url", "image_url": {"url": data_url(shown.image)}} for shown in item.images),
                    {"type": "text", "text": item.user_prompt},
                ]},
            ],
        }
        if self.logprobs:
            request.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        return request


def score_from_response(response: dict[str, Any], values: Sequence[int], *, reasoning: bool,
                        stated: bool = False) -> JudgeScore | JudgeFailure:
    """A row's result from a chat-completions response (as JSON): the logprobs' expectation
    where the answer states its score, else (or when ``stated``) the stated integer; a failure
    if none is stated."""
    problem = completion_problem(response)
    if problem:
        return JudgeFailure(f"the judge endpoint sent something that is not a chat completion ({problem})")
    choice = response["choices"][0]
    answer = choice["message"]["content"] or ""
    rationale = answer if reasoning else None
    position = find_stated_score(answer, values)
    content = (choice.get("logprobs") or {}).get("content") or []
    probabilities = _logprob_probabilities(content, position, values) if position is not None and not stated else None
    if probabilities is None:
        return stated_score(answer, values, rationale)
    return JudgeScore(score=expectation(probabilities, values), probabilities=probabilities,
                      source=FROM_LOGPROBS, rationale=rationale)


def _logprob_probabilities(content: list[dict[str, Any]], stated: StatedScore, values: Sequence[int]
                           ) -> dict[str, float] | None:
    """P(value) from the top_logprobs at the stated score's first digit; None when they do not tell."""
    index = _token_at(content, stated.start)
    if index is None:
        return None
    digits = first_digits(values)
    first = _digit_probabilities(content[index], digits)
    if not first:
        return None
    q = None
    if 10 in values:
        if content[index]["token"].strip() != "1" or index + 1 >= len(content):
            if first.get("1", 0.0) > 0:
                return None  # "1" may go on to "10": only the stated integer is known
        else:
            q = _digit_probabilities(content[index + 1], ("0",)).get("0", 0.0)
    try:
        return scale_probabilities(first, q if q is not None else 0.0, values)
    except ValueError:
        return None


def _token_at(content: list[dict[str, Any]], offset: int) -> int | None:
    """The index of the token whose text covers character ``offset`` of the answer."""
    position = 0
    for index, token in enumerate(content):
        end = position + len(token["token"])
        if position <= offset < end:
            return index
        position = end
    return None


def _digit_probabilities(token: dict[str, Any], digits: Sequence[str]) -> dict[str, float]:
    """digit -> probability at this position, from its top_logprobs (absolute probabilities)."""
    out: dict[str, float] = {}
    for alternative in token.get("top_logprobs") or []:
        text = alternative["token"].strip()
        if text in digits and alternative["logprob"] is not None:
            out[text] = out.get(text, 0.0) + math.exp(alternative["logprob"])
    return out


def data_url(image: Image.Image) -> str:
    """``image`` as a PNG data URL (the judge's images are decoded pictures, not files)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return encoded_url(buf.getvalue(), "image/png")
