"""Per-person and per-SAW limits on reads and on refused reads (sliding windows, in this process).

With several replicas each enforces its own window; the alert on refused-read bursts is per replica too
(docs/OPERATIONS.md). A person over a limit gets 429 for a while, whatever they ask for, so the limit
itself tells nothing about any recording.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque

from app.errors import AppError


class RateLimited(AppError):
    status = 429
    code = "rate_limited"
    title = "Too many reads or refused reads; wait a minute"


class ReadLimiter:
    def __init__(self, *, reads_per_minute: int = 120, denials_per_10_minutes: int = 20) -> None:
        self.reads_per_minute = reads_per_minute
        self.denials_per_10_minutes = denials_per_10_minutes
        self._reads: dict[str, deque[float]] = defaultdict(deque)
        self._denials: dict[str, deque[float]] = defaultdict(deque)

    @staticmethod
    def _keys(subject: str, saw_id: str | None) -> list[str]:
        return [f"person:{subject}"] + ([f"saw:{saw_id}"] if saw_id else [])

    @staticmethod
    def _count(window: deque[float], now: float, span: float) -> int:
        while window and window[0] <= now - span:
            window.popleft()
        return len(window)

    def check_allowed(self, subject: str, saw_id: str | None) -> None:
        """Raise RateLimited if this person or SAW read too much, or was refused too often, lately."""
        now = time.monotonic()
        for key in self._keys(subject, saw_id):
            if self._count(self._denials[key], now, 600) >= self.denials_per_10_minutes:
                raise RateLimited()
            if self._count(self._reads[key], now, 60) >= self.reads_per_minute:
                raise RateLimited()
            self._reads[key].append(now)

    def record_denial(self, subject: str, saw_id: str | None) -> bool:
        """Count a refused read; True when this one reached the burst threshold (alert)."""
        now = time.monotonic()
        burst = False
        for key in self._keys(subject, saw_id):
            self._denials[key].append(now)
            burst |= self._count(self._denials[key], now, 600) == self.denials_per_10_minutes
        return burst
