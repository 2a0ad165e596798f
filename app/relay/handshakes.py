"""A client's WebSocket handshake as the relay sees it, on either data plane.

`Relay` admits a session the same way whichever data plane carries it: it reads the request's headers and
query, opens the upstream, then accepts or refuses. What differs is below that line: `AsgiHandshake` answers
through Starlette's WebSocket and relays with `websockets` (`RelaySession`); `DirectHandshake` has the raw
transport, handed over by the HTTP protocol at the upgrade, and relays on asyncio protocols (`DirectSession`).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection

from app.errors import PROBLEM_JSON
from app.metrics import RelayMetrics
from app.relay.direct_session import DirectSession
from app.relay.direct_upstream import open_direct_upstream
from app.relay.legs import ClientLeg, UpstreamLeg
from app.relay.registry import LiveSession
from app.relay.session import RelaySession
from app.relay.settings import RelaySettings
from app.relay.tap import FrameTap, SessionInfo
from app.relay.upstream import UpstreamTarget, open_upstream
from app.relay.wire import accept_key, valid_client_key


class ClientHandshake(Protocol):
    """What the relay needs of a client's handshake, whichever data plane carries the session."""

    raw_headers: list[tuple[bytes, bytes]]
    query: bytes

    def header(self, name: str) -> str | None: ...

    async def open_upstream(self, target: UpstreamTarget, settings: RelaySettings) -> Any: ...

    async def accept(self, upstream: Any, headers: list[tuple[bytes, bytes]]) -> None:
        """Answer 101 with the upstream's subprotocol; raises if the client is gone (the upstream is closed)."""
        ...

    async def drop_upstream(self, upstream: Any) -> None:
        """Close an upstream opened for a call that will not be accepted."""
        ...

    async def refuse(self, status: int, body: dict[str, Any], headers: Mapping[str, str] | None) -> None: ...

    def session(self, upstream: Any, *, info: SessionInfo, metrics: RelayMetrics, tap: FrameTap | None,
                settings: RelaySettings) -> LiveSession: ...


class AsgiHandshake:
    """The ASGI data plane: Starlette's WebSocket to the client, `websockets` to the upstream."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.raw_headers: list[tuple[bytes, bytes]] = websocket.scope["headers"]
        self.query: bytes = websocket.scope.get("query_string", b"")

    def header(self, name: str) -> str | None:
        return self.websocket.headers.get(name)

    async def open_upstream(self, target: UpstreamTarget, settings: RelaySettings) -> ClientConnection:
        return await open_upstream(
            target, connect_timeout=settings.relay_connect_timeout_s,
            max_message_bytes=settings.relay_max_message_bytes, max_queue=settings.relay_queue_frames,
            ping_interval=settings.relay_ping_interval_s,
        )

    async def drop_upstream(self, upstream: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            await upstream.close(1001, "relay shutting down")

    async def accept(self, upstream: ClientConnection, headers: list[tuple[bytes, bytes]]) -> None:
        try:
            await self.websocket.accept(subprotocol=upstream.subprotocol, headers=headers)
        except Exception:
            await upstream.close(1001, "client gone")
            raise

    async def refuse(self, status: int, body: dict[str, Any], headers: Mapping[str, str] | None) -> None:
        """Refuse with an HTTP status and problem+json, where the server supports it; else a close."""
        response = JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)
        if "websocket.http.response" in self.websocket.scope.get("extensions", {}):
            await self.websocket.send_denial_response(response)
        else:
            await self.websocket.close(code=1011 if status >= 500 else 1008, reason=body["code"])

    def session(self, upstream: ClientConnection, *, info: SessionInfo, metrics: RelayMetrics,
                tap: FrameTap | None, settings: RelaySettings) -> RelaySession:
        return RelaySession(websocket=self.websocket, upstream=upstream, info=info, metrics=metrics, tap=tap,
                            idle_timeout=settings.relay_idle_timeout_s, max_session=settings.relay_max_session_s)


REFUSED_LINGER_S = 2.0


def _phrase(status: int) -> str:
    """The reason phrase of `status`; a valid status without a registered one (499, 520, ...) gets none."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


class _Discard(asyncio.Protocol):
    """A refused connection's last moments: input is dropped, `on_lost` is told when it ends."""

    def __init__(self, on_lost: Callable[[], None] | None) -> None:
        self.on_lost = on_lost

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - protocol signature
        if self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost()


class DirectHandshake:
    """The direct data plane: the client's connection, taken over from the HTTP protocol at its upgrade.

    The transport stops reading until the session starts; the answer (101 or a refusal) is written here.
    """

    def __init__(self, transport: asyncio.Transport, *, headers: list[tuple[bytes, bytes]], query: bytes,
                 default_headers: list[tuple[bytes, bytes]], max_message: int,
                 release: Callable[[], None] | None = None) -> None:
        self.raw_headers = headers
        self.query = query
        self.default_headers = default_headers
        self.leg = ClientLeg(max_message)
        # Until its 101, the connection counts against its address (`max_open_connections_per_address`):
        # `release` is called once, at the 101 or when the connection ends, whichever comes first.
        self.leg.on_lost = release
        transport.set_protocol(self.leg)
        self.leg.connection_made(transport)
        transport.pause_reading()

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        for key, value in self.raw_headers:
            if key == wanted:
                return value.decode("latin-1")
        return None

    def bad_request(self, method: str) -> str | None:
        """Why this upgrade request is not a WebSocket handshake we can answer, or None."""
        if method != "GET":
            return "A WebSocket handshake is a GET request"
        if self.header("sec-websocket-version") != "13":
            return "Sec-WebSocket-Version must be 13"
        key = self.header("sec-websocket-key")
        if key is None or not valid_client_key(key):
            return "Sec-WebSocket-Key is missing or malformed"
        return None

    async def open_upstream(self, target: UpstreamTarget, settings: RelaySettings) -> UpstreamLeg:
        return await open_direct_upstream(target, connect_timeout=settings.relay_connect_timeout_s,
                                          max_message_bytes=settings.relay_max_message_bytes)

    async def drop_upstream(self, upstream: UpstreamLeg) -> None:
        upstream.close(1001, "relay shutting down")

    async def accept(self, upstream: UpstreamLeg, headers: list[tuple[bytes, bytes]]) -> None:
        transport = self.leg.transport
        if transport is None or transport.is_closing() or self.leg.state == "closed":
            upstream.close(1001, "client gone")
            raise ConnectionError("the client left before the handshake was answered")
        key = self.header("sec-websocket-key") or ""
        lines = [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket", b"Connection: Upgrade",
                 b"Sec-WebSocket-Accept: " + accept_key(key).encode("ascii")]
        subprotocol = getattr(upstream, "subprotocol", None)
        if subprotocol:
            lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("latin-1"))
        lines.extend(name + b": " + value for name, value in [*self.default_headers, *headers])
        transport.write(b"\r\n".join(lines) + b"\r\n\r\n")
        release, self.leg.on_lost = self.leg.on_lost, None
        if release is not None:
            release()  # an established call is never counted against its address

    async def refuse(self, status: int, body: dict[str, Any], headers: Mapping[str, str] | None) -> None:
        transport = self.leg.transport
        if transport is None or transport.is_closing():
            return
        content = json.dumps(body, separators=(",", ":")).encode("utf-8")
        lines = [f"HTTP/1.1 {status} {_phrase(status)}".encode("ascii")]
        lines.extend(name + b": " + value for name, value in self.default_headers)
        lines.extend(f"{name}: {value}".encode("latin-1") for name, value in (headers or {}).items())
        lines += [f"content-type: {PROBLEM_JSON}".encode("ascii"), f"content-length: {len(content)}".encode("ascii"),
                  b"connection: close"]
        transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + content)
        # Never parse frames from a connection that was not upgraded: what the client still sends is read and
        # dropped until it closes (so it reads our answer), for at most REFUSED_LINGER_S.
        discard = _Discard(self.leg.on_lost)
        self.leg.on_lost = None
        transport.set_protocol(discard)
        discard.connection_made(transport)
        with contextlib.suppress(Exception):
            if transport.can_write_eof():
                transport.write_eof()
        transport.resume_reading()
        asyncio.get_running_loop().call_later(REFUSED_LINGER_S, transport.abort)

    def abort(self) -> None:
        """Drop the connection (a handshake that failed in an unexpected way)."""
        self.leg.abort()

    def session(self, upstream: UpstreamLeg, *, info: SessionInfo, metrics: RelayMetrics, tap: FrameTap | None,
                settings: RelaySettings) -> DirectSession:
        return DirectSession(client=self.leg, upstream=upstream, info=info, metrics=metrics, tap=tap,
                             idle_timeout=settings.relay_idle_timeout_s, max_session=settings.relay_max_session_s,
                             ping_interval=settings.relay_ping_interval_s)
