"""The hook the recorder plugs into. A tap must never block or fail the relay (C8)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from app.request_id import RequestId


class Direction(StrEnum):
    CLIENT_TO_SERVICE = "c2s"
    SERVICE_TO_CLIENT = "s2c"


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What a tap may know of a session: ids and routing, never credentials."""

    request_id: RequestId
    correlation_id: str | None
    resource_id: str
    resource_name: str
    region: str
    path: str
    started_at: datetime


class FrameTap(Protocol):
    def on_frame(self, direction: Direction, offset_ns: int, payload: bytes, text: bool) -> None:
        """Called inline for every relayed message; must return at once and never raise. `payload` is the
        message as sent; a text message's (`text`) is UTF-8 already checked by the relay, so the tap neither
        decodes it nor encodes it again."""
        ...

    def on_close(self, client_code: int | None, upstream_code: int | None, reason: str) -> None:
        """Called once when the session ends."""
        ...


class TapFactory(Protocol):
    async def open(self, info: SessionInfo) -> FrameTap | None:
        """A tap for this session, or None (no consent: C1). Called with a short timeout."""
        ...


class NoTap:
    """The default: nothing is recorded."""

    async def open(self, info: SessionInfo) -> FrameTap | None:  # noqa: ARG002 - protocol signature
        return None
