"""What a judge answers for one criterion of one pair, and how a written answer is read.

A score over a scale of integers ``min..max`` (0 <= min, max <= 10) is the expectation over
the scale's values. Qwen tokenizers write numbers one digit per token, so every value is
one digit token except 10, which is "1" then "0": P(10) = P("1") * q and, when 1 is on the
scale too, P(1) = P("1") * (1 - q), with q = P("0" | "1").

The documented answer format (reasoning judges, endpoint judges) is read by
``find_stated_score``: the score is

- the whole answer, when it is only an integer (``7``);
- else the last line of the form ``Score: 7`` (any case; ``**Score:** 7`` too);
- else the ``"score"`` of the last JSON object in the answer (``{"reason": "...", "score": 7}``).

An integer outside the scale, or none of these, is no score: the item fails with the
answer attached. Nothing is guessed and nothing is scored 0 in its place.

A rubric whose ``scoring`` is ``stated`` takes that integer as the score (``stated_score``),
as the public benchmarks' scorers do, rather than the expectation. Pure Python.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

# How a criterion's score was obtained, as the report lists it.
FROM_LOGITS = "logits"  # the local judge: expectation under its next-token distribution
FROM_LOGPROBS = "logprobs"  # an endpoint's top_logprobs: the same expectation
FROM_ANSWER = "answer"  # the integer the answer states (stated scoring, or no probabilities available)

# Enough for the answer "10" and its end when the judge is asked for the integer alone.
SCORE_MODE_TOKENS = 4


@dataclass
class JudgeScore:
    score: float
    probabilities: dict[str, float]  # "min".."max" -> probability; sums to 1
    source: str = FROM_LOGITS
    rationale: str | None = None  # the answer's text, in the reasoning mode


@dataclass
class JudgeFailure:
    """One criterion of one pair could not be scored; ``reason`` says why (with the answer)."""

    reason: str


@dataclass(frozen=True)
class StatedScore:
    value: int
    start: int  # character offset of its first digit in the answer


def first_digits(values: Sequence[int]) -> tuple[str, ...]:
    """The digit tokens a value of the scale can start with, in order."""
    return tuple(sorted({str(v)[0] for v in values}, key=int))


def scale_probabilities(first: Mapping[str, float], q: float | None, values: Sequence[int]) -> dict[str, float]:
    """P(value) for each value of the scale, from the first-digit probabilities ``first``
    (renormalised over ``first_digits(values)``) and q = P("0" | "1") (needed when 10 is on
    the scale)."""
    total = sum(first.get(d, 0.0) for d in first_digits(values))
    if total <= 0:
        raise ValueError("no probability on any of the scale's digits")
    p = {d: first.get(d, 0.0) / total for d in first_digits(values)}
    out = {}
    for v in values:
        if v == 10:
            out["10"] = p["1"] * q
        elif v == 1 and 10 in values:
            out["1"] = p["1"] * (1 - q)
        else:
            out[str(v)] = p[str(v)]
    return out


def expectation(probabilities: Mapping[str, float], values: Sequence[int]) -> float:
    score = sum(int(v) * p for v, p in probabilities.items())
    return min(max(score, float(min(values))), float(max(values)))  # rounding can leave it a hair outside


_SCORE_LINE = re.compile(r"^[\s*#>_-]*score[\s*_]*[:：][\s*_]*(\d+)\b", re.IGNORECASE | re.MULTILINE)


def find_stated_score(answer: str, values: Sequence[int]) -> StatedScore | None:
    """Where ``answer`` states its score, in the documented format; None if it does not."""
    stripped = answer.strip()
    if re.fullmatch(r"\d+", stripped):
        return _within(StatedScore(int(stripped), answer.index(stripped)), values)
    lines = list(_SCORE_LINE.finditer(answer))
    if lines:
        last = lines[-1]
        return _within(StatedScore(int(last.group(1)), last.start(1)), values)
    return _within(_json_score(answer), values)


def stated_score(answer: str, values: Sequence[int], rationale: str | None = None) -> "JudgeScore | JudgeFailure":
    """The integer ``answer`` states, as the score (all its probability on that value), or a
    failure with the answer attached when it states none on the scale."""
    stated = find_stated_score(answer, values)
    if stated is None:
        return JudgeFailure(unreadable(answer, values))
    return JudgeScore(score=float(stated.value), source=FROM_ANSWER, rationale=rationale,
                      probabilities={str(v): float(v == stated.value) for v in values})


def unreadable(answer: str, values: Sequence[int]) -> str:
    """The failure reason of an answer without a readable score; the answer is attached."""
    return (f"the judge's answer states no score from {min(values)} to {max(values)} (expected the "
            f"integer alone, a line 'Score: N' or a JSON object with \"score\"); answer: {answer!r}")


def _json_score(answer: str) -> StatedScore | None:
    decoder = json.JSONDecoder()
    found = None
    for match in re.finditer(r"\{", answer):
        try:
            obj, end = decoder.raw_decode(answer, match.start())
        except json.JSONDecodeError:
            continue
        value = obj.get("score") if isinstance(obj, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            digits = re.search(r'"score"\s*:\s*(\d+)', answer[match.start():end])
            if digits:
                found = StatedScore(value, match.start() + digits.start(1))
    return found


def _within(stated: StatedScore | None, values: Sequence[int]) -> StatedScore | None:
    return stated if stated is not None and stated.value in values else None
