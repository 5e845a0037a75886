"""Pairs per minute and the time left, measured over a recent window (never since the start:
a resumed run's earlier pairs, or a slow start, would make both nonsense).

One estimator for the producer's progress bar and for ``status``; its samples are
``[time, done, failed]``, newest first, each taken when the stage's progress was read.
"""

from __future__ import annotations

from typing import Any

# The rate is measured over the samples of this last stretch of time.
RATE_WINDOW_SECONDS = 600.0


def rate_and_eta(samples: list[list[float]], remaining: int, now: float,
                 window: float = RATE_WINDOW_SECONDS) -> dict[str, Any]:
    """Items finished (done or failed) per minute over the samples of the last ``window``
    seconds, and the seconds left at that rate.

    Two samples inside the window are needed for a rate; a stage that has not moved for the
    whole window has none, and ``last_progress_ago`` says how long it has been still.
    """
    recent = [s for s in samples if s[0] >= now - window]
    rate = None
    if len(recent) >= 2 and recent[0][0] > recent[-1][0]:
        finished = (recent[0][1] + recent[0][2]) - (recent[-1][1] + recent[-1][2])
        rate = max(finished, 0) / (recent[0][0] - recent[-1][0]) * 60
    if remaining <= 0:
        eta = 0.0
    elif rate:
        eta = remaining / rate * 60
    else:
        eta = None
    last = round(now - samples[0][0], 1) if samples else None
    return {"rate_per_min": None if rate is None else round(rate, 3),
            "eta_seconds": None if eta is None else round(eta, 1), "last_progress_ago": last}


def duration(seconds: float | None) -> str:
    """``h:mm:ss``, or ``-`` for a duration not known."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def per_minute(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1f}"
