"""Live sessions of this process, for graceful drain on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol


class LiveSession(Protocol):
    """A relayed session on either data plane."""

    async def run(self) -> Any: ...

    def request_close(self, code: int, reason: str) -> None: ...


class Admission:
    """One handshake being admitted; `done()` (idempotent) when it became a session or was refused."""

    def __init__(self, registry: SessionRegistry) -> None:
        self._registry: SessionRegistry | None = registry

    def done(self) -> None:
        registry, self._registry = self._registry, None
        if registry is not None:
            registry.admitting -= 1
            registry.settle()


class SessionRegistry:
    """Live sessions and handshakes being admitted: admission counts both against the session limit, and
    a drain waits for both (a handshake in flight when the drain begins is refused before its 101)."""

    def __init__(self) -> None:
        self._sessions: set[LiveSession] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.admitting = 0
        self.draining = False

    def __len__(self) -> int:
        return len(self._sessions)

    def admit(self) -> Admission:
        self.admitting += 1
        self._idle.clear()
        return Admission(self)

    def add(self, session: LiveSession) -> None:
        self._sessions.add(session)
        self._idle.clear()

    def discard(self, session: LiveSession) -> None:
        self._sessions.discard(session)
        self.settle()

    def settle(self) -> None:
        if not self._sessions and not self.admitting:
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
