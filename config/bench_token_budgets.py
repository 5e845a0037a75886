"""EVALFLEET_BENCH_TOKEN_BUDGETS, a setting for BENCHMARKS ONLY: each relations prompt's token
budget drawn from a fixed distribution.

Random-weight models (the benchmarks' stand-ins for the real ones) never emit eos, so every
description would run to max_new_tokens; real answers end at lengths spread around a median.
With this setting a run's prompts end at lengths drawn from a log-normal distribution instead,
so a benchmark through the fleet has the shape of a real run. The text of such a run is cut at
those lengths: it is not a real run's, which is why the setting is part of the run's identity
and named in its report.

Syntax: ``lognormal:median=M,sigma=S,cap=C,seed=N`` (all four, any order), e.g.
``lognormal:median=140,sigma=0.6,cap=512,seed=0``. A prompt's budget is
``round(exp(ln M + S * z))`` clamped to 1..C, then to the run's max_new_tokens, with
``z = Phi^-1(u)`` and ``u`` read from the SHA-256 of ``"N|pair key|predicate"``: the same prompt
gets the same budget whichever task, batch or worker carries it. ``sigma=0`` gives every prompt
``M`` tokens.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from statistics import NormalDist

DISTRIBUTIONS = ("lognormal",)
KEYS = ("median", "sigma", "cap", "seed")
# Beyond these no benchmark has a use: a spread of exp(4) either way, the longest generation
# a run may ask for (MAXIMA's max_new_tokens), a seed NumPy takes.
SIGMA_MAX = 4.0
CAP_MAX = 131_072
SEED_MAX = 2**32 - 1
# Bits of the digest that make the uniform draw (a double holds 53).
_UNIFORM_BITS = 53


@dataclass(frozen=True)
class TokenBudgets:
    median: float
    sigma: float
    cap: int
    seed: int

    @property
    def spec(self) -> str:
        """The setting's value in its one spelling (what the run records)."""
        return f"lognormal:median={self.median:g},sigma={self.sigma:g},cap={self.cap},seed={self.seed}"

    def budget(self, key: str, predicate: str, max_new_tokens: int) -> int:
        """The token budget of the prompt of pair ``key`` and ``predicate``, at most ``max_new_tokens``."""
        digest = hashlib.sha256(f"{self.seed}|{key}|{predicate}".encode()).digest()
        uniform = (int.from_bytes(digest[:8], "big") >> (64 - _UNIFORM_BITS)) + 0.5
        z = NormalDist().inv_cdf(uniform / 2**_UNIFORM_BITS)
        drawn = round(math.exp(math.log(self.median) + self.sigma * z))
        return max(1, min(drawn, self.cap, max_new_tokens))


def parse_token_budgets(text: str) -> TokenBudgets | None:
    """The budgets ``text`` names, or None for "" (off). Raises ValueError saying what is wrong."""
    text = text.strip()
    if not text:
        return None
    distribution, colon, rest = text.partition(":")
    if not colon or distribution.strip() not in DISTRIBUTIONS:
        raise ValueError(f"give {' or '.join(DISTRIBUTIONS)}:median=M,sigma=S,cap=C,seed=N "
                         "(e.g. lognormal:median=140,sigma=0.6,cap=512,seed=0)")
    values: dict[str, str] = {}
    for part in rest.split(","):
        name, equals, value = (piece.strip() for piece in part.partition("="))
        if not equals or name not in KEYS:
            raise ValueError(f"{part.strip()!r} is none of {', '.join(f'{k}=...' for k in KEYS)}")
        if name in values:
            raise ValueError(f"{name} is given twice")
        values[name] = value
    if missing := [name for name in KEYS if name not in values]:
        raise ValueError(f"{', '.join(missing)} missing: give median, sigma, cap and seed")
    return _checked(values)


def _checked(values: dict[str, str]) -> TokenBudgets:
    try:
        median, sigma = float(values["median"]), float(values["sigma"])
        cap, seed = int(values["cap"]), int(values["seed"])
    except ValueError:
        raise ValueError("median and sigma must be numbers, cap and seed whole numbers") from None
    if not (math.isfinite(median) and 1 <= median <= CAP_MAX):
        raise ValueError(f"median={values['median']}: a number of tokens from 1 to {CAP_MAX}")
    if not (math.isfinite(sigma) and 0 <= sigma <= SIGMA_MAX):
        raise ValueError(f"sigma={values['sigma']}: from 0 (every prompt median tokens) to {SIGMA_MAX:g}")
    if not 1 <= cap <= CAP_MAX:
        raise ValueError(f"cap={values['cap']}: from 1 to {CAP_MAX}")
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed={values['seed']}: from 0 to {SEED_MAX}")
    return TokenBudgets(median=median, sigma=sigma, cap=cap, seed=seed)
