"""Live sessions of this process, for graceful drain on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol


class LiveSession(Protocol):
    """A relayed session on either data plane."""

    async def run(self) -> Any: ...

    def request_close(self, code: int, reason: str) -> None: ...


class SessionRegistry:
    def __init__(self) -> None:
        self._sessions: set[LiveSession] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, session: LiveSession) -> None:
        self._sessions.add(session)
        self._idle.clear()

    def discard(self, session: LiveSession) -> None:
        self._sessions.discard(session)
        if not self._sessions:
            self._idle.set()

    async def drain(self, timeout: float) -> int:
        """Stop taking sessions, let live ones finish up to `timeout`, then close the rest with 1001.

        Returns how many sessions had to be closed.
        """
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return 0
        except TimeoutError:
            remaining = list(self._sessions)
            for session in remaining:
                session.request_close(1001, "server shutting down")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 10)
            return len(remaining)
