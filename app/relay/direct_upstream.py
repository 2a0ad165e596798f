"""Opening the upstream leg of the direct data plane: TCP (+TLS), the client handshake, typed refusals.

Refusals are the ones `open_upstream` (the ASGI data plane's `websockets` client) raises, mapped the same way:
redirects are refused, never followed (following one would forward the client's credentials); a non-101 status
is passed on; a handshake that does not check out is 502; no answer within the connect timeout is 504.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import ssl

import httptools
from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from app.relay.legs import UpstreamLeg
from app.relay.upstream import UpstreamError, UpstreamTarget
from app.relay.wire import accept_key

_MAX_RESPONSE_HEAD = 64 * 1024


class _Handshake:
    """Reads the upstream's answer to our upgrade request, then hands the connection to the leg."""

    def __init__(self, leg: UpstreamLeg) -> None:
        self.leg = leg
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.parser = httptools.HttpResponseParser(self)
        self.read = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status != 101 and not self.done.done():
            self.done.set_result(None)  # a refusal: its status is all we need, not its body

    def feed(self, data: bytes) -> bytes | None:
        """Returns what follows the 101 answer once it is complete (the first frames), else None."""
        self.read += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0]:]
            if not self.done.done():
                self.done.set_result(None)
            return rest
        except httptools.HttpParserError as exc:
            if not self.done.done():
                self.done.set_exception(UpstreamError("upstream_bad_handshake", 502))
            raise exc
        if self.read > _MAX_RESPONSE_HEAD and not self.done.done():
            self.done.set_exception(UpstreamError("upstream_bad_handshake", 502))
        return None


class _HandshakingLeg(UpstreamLeg):
    """An upstream leg that first reads the HTTP answer to its upgrade request."""

    def __init__(self, max_message: int) -> None:
        super().__init__(max_message)
        self.handshake: _Handshake | None = _Handshake(self)
        self.subprotocol: str | None = None

    def started(self, request: bytes) -> _Handshake:
        """Send the upgrade request; returns the handshake whose `done` tells when the answer is in."""
        if self.transport is None or self.handshake is None:
            raise UpstreamError("upstream_unreachable", 502)
        self.transport.write(request)
        return self.handshake

    def data_received(self, data: bytes) -> None:
        handshake = self.handshake
        if handshake is None:
            super().data_received(data)
            return
        try:
            rest = handshake.feed(data)
        except httptools.HttpParserError:
            self.abort()
            return
        if handshake.done.done() and self.transport is not None:
            self.transport.pause_reading()  # frames wait in the socket until the session joins the legs
        if rest is not None:
            self.handshake = None
            self._buffer += rest

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handshake is not None and not self.handshake.done.done():
            self.handshake.done.set_exception(UpstreamError("upstream_unreachable", 502))
        super().connection_lost(exc)


async def open_direct_upstream(target: UpstreamTarget, *, connect_timeout: float, max_message_bytes: int,
                               ssl_context: ssl.SSLContext | None = None) -> _HandshakingLeg:
    """Connect and complete the WebSocket handshake; raises UpstreamError (never a traceback with the URL)."""
    try:
        uri = parse_uri(target.url)
    except InvalidURI as exc:  # the client's query made no valid URL (e.g. a `#`)
        raise UpstreamError("bad_request_target", 400) from exc
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    request = _request(uri.host, uri.port, uri.secure, uri.resource_name, key, target)
    loop = asyncio.get_running_loop()
    leg: _HandshakingLeg | None = None
    try:
        async with asyncio.timeout(connect_timeout):
            context = (ssl_context or _default_tls()) if uri.secure else None
            _, leg = await loop.create_connection(
                lambda: _HandshakingLeg(max_message_bytes), uri.host, uri.port, ssl=context,
                server_hostname=uri.host if context else None,
            )
            handshake = leg.started(request)
            await handshake.done
    except UpstreamError:
        _drop(leg)
        raise
    except TimeoutError as exc:
        _drop(leg)
        raise UpstreamError("upstream_timeout", 504) from exc
    except OSError as exc:  # refused, unreachable, DNS, TLS
        _drop(leg)
        raise UpstreamError("upstream_unreachable", 502) from exc
    except Exception as exc:  # anything else: a refusal, never a traceback with the URL
        _drop(leg)
        raise UpstreamError("upstream_failed", 502) from exc
    try:
        leg.subprotocol = _check_answer(handshake, key, target.subprotocols)
    except UpstreamError:
        _drop(leg)
        raise
    return leg


@functools.cache
def _default_tls() -> ssl.SSLContext:
    """One TLS client context per process: building one reads the CA bundle (~50 ms on the event loop)."""
    return ssl.create_default_context()


def _drop(leg: UpstreamLeg | None) -> None:
    if leg is not None:
        leg.abort()


def _check_answer(handshake: _Handshake, key: str, offered: list[str]) -> str | None:
    """The upstream's 101 must be a proper WebSocket answer; returns the subprotocol it chose."""
    status = handshake.status
    if status != 101:
        if 300 <= status < 400:
            raise UpstreamError("upstream_redirect_refused", 502)
        raise UpstreamError("upstream_refused", status if 400 <= status < 600 else 502)
    headers: dict[str, list[str]] = {}
    for name, value in handshake.headers:
        headers.setdefault(name, []).append(value)
    upgrade = [v.strip().lower() for v in ",".join(headers.get("upgrade", [])).split(",")]
    connection = [v.strip().lower() for v in ",".join(headers.get("connection", [])).split(",")]
    if "websocket" not in upgrade or "upgrade" not in connection:
        raise UpstreamError("upstream_bad_handshake", 502)
    if headers.get("sec-websocket-accept") != [accept_key(key)] or headers.get("sec-websocket-extensions"):
        raise UpstreamError("upstream_bad_handshake", 502)
    chosen = headers.get("sec-websocket-protocol")
    if chosen is None:
        return None
    if len(chosen) != 1 or chosen[0].strip() not in offered:
        raise UpstreamError("upstream_bad_handshake", 502)
    return chosen[0].strip()


def _request(host: str, port: int, secure: bool, resource: str, key: str, target: UpstreamTarget) -> bytes:
    default_port = 443 if secure else 80
    host_value = f"[{host}]" if ":" in host else host
    if port != default_port:
        host_value += f":{port}"
    lines = [f"GET {resource} HTTP/1.1", f"Host: {host_value}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if target.subprotocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(target.subprotocols))
    lines.extend(f"{name}: {value}" for name, value in target.headers)
    if not any(name == "user-agent" for name, _ in target.headers):
        lines.append("User-Agent: voicelog")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
