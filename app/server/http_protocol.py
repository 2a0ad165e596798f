"""uvicorn's httptools protocol with the limits it lacks: head and body sizes, head and body timeouts,
connections per address.

The cost stays off the hot path: one addition and one comparison per socket read while a head is being read,
one timer per request head, one more per request with a body (re-armed only when it fires) and an addition, a
comparison and a clock read per body chunk, one dict update per connection. A WebSocket leaves this protocol
at its upgrade (uvicorn hands the transport to the WebSocket protocol), so relayed frames never pass through
here. Header values are never logged: they carry credentials."""

from __future__ import annotations

import asyncio
import http
import time
from asyncio import TimerHandle
from collections.abc import Callable
from ipaddress import IPv6Address, ip_address
from typing import Any, ClassVar

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.logs import get_logger
from app.server.settings import ServerSettings

log = get_logger("voicelog.server")

# The relay's direct data plane: (transport, method, request target, headers, default response headers, release
# of the connection's count against its address) -> whether it took the connection.
TakeOver = Callable[[asyncio.Transport, str, bytes, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]],
                     Callable[[], None]], bool]

_LOG_EVERY_S = 1.0  # refusals come in floods when they come: one line per reason per second, with a count


class HeadRefused(Exception):
    """Raised in a parser callback to stop parsing; httptools wraps it, `data_received` unwraps it. `in_body`:
    raised while reading the body of a request the app already has (its cycle is answered for, not queued)."""

    def __init__(self, status: int, reason: str, *, in_body: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.in_body = in_body


REPORT_VERIFY = b"/audit/reports/verify"  # the one route whose body (a signed report) may be large


class ConnectionGuard:
    """One per server: its limits, and how many connections each peer address holds that are not WebSockets."""

    def __init__(self, settings: ServerSettings, take_over: TakeOver | None = None) -> None:
        self.settings = settings
        self.take_over = take_over
        self.open_by_address: dict[str, int] = {}
        self._exempt = tuple(settings.connection_limit_exempt)
        self._last_logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def is_exempt(self, host: str) -> bool:
        if not self._exempt:
            return False
        try:
            address = ip_address(host)
        except ValueError:
            return False
        # A dual-stack listener sees an IPv4 proxy as ::ffff:a.b.c.d.
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            return any(address.ipv4_mapped in net for net in self._exempt)
        return any(address in net for net in self._exempt)

    def admit(self, host: str) -> int:
        """Count one more connection from `host`; returns how many it now holds."""
        held = self.open_by_address.get(host, 0) + 1
        self.open_by_address[host] = held
        return held

    def release(self, host: str) -> None:
        held = self.open_by_address.get(host, 0) - 1
        if held > 0:
            self.open_by_address[host] = held
        else:
            self.open_by_address.pop(host, None)

    def held(self, host: str) -> int:
        return self.open_by_address.get(host, 0)

    def note_refusal(self, reason: str, peer: str | None) -> None:
        now = time.monotonic()
        if now - self._last_logged.get(reason, -_LOG_EVERY_S) < _LOG_EVERY_S:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
            return
        self._last_logged[reason] = now
        log.warning("server.connection.refused", reason=reason, peer=peer, not_logged=self._unlogged.pop(reason, 0))


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """One connection. Subclassed per server by `guarded_http_protocol`, which sets `guard`."""

    guard: ClassVar[ConnectionGuard]

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = self.guard.settings
        self._max_url = limits.max_request_line_bytes
        self._max_head = limits.max_header_bytes
        self._max_headers = limits.max_header_count
        self._header_timeout = limits.header_timeout_s
        self._max_body = limits.max_body_bytes
        self._body_idle_timeout = limits.body_idle_timeout_s
        self._body_timeout = limits.body_timeout_s
        self._body_limit = limits.max_body_bytes  # of the request whose body is being read
        self._body_bytes = 0  # read of that body so far
        self._body_last = 0.0  # loop time of its last read (or of its head's end)
        self._body_deadline = 0.0  # loop time by which it must be complete
        self._body_timer: TimerHandle | None = None  # armed from the end of a head to the end of its body
        self._head_bytes: int | None = None  # bytes read of the head in progress; None while reading a body
        self._field_bytes = 0  # exact bytes of the header fields parsed so far in this head
        self._head_timer: TimerHandle | None = None
        self._peer: str | None = None  # the address this connection is counted under, until it is not
        self._refused = False

    # --- connection ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = self.client[0] if self.client else None
        if host is not None and not self.guard.is_exempt(host):
            self._peer = host
            if self.guard.admit(host) > self.guard.settings.max_open_connections_per_address:
                self.guard.note_refusal("open_connections_per_address", host)
                self._refused = True
                transport.close()  # nothing read yet, so nothing to linger for
                return
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self._header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        self._release_peer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, plus the head count and our refusals (0.55: same shape).
        if self._refused:
            return  # what a refused client still sends is read and dropped, so it can read our answer
        self._unset_keepalive_if_required()
        if self._head_bytes is not None:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            refusal = exc.__context__
            if isinstance(refusal, HeadRefused) and refusal.in_body:
                self._refuse_body(refusal)
            else:
                self._refuse(refusal if isinstance(refusal, HeadRefused) else HeadRefused(400, "malformed"))
            return
        if self._head_bytes is not None and self._head_bytes > self._max_head:
            # A head still incomplete past the limit (one long header is buffered inside the parser).
            self._refuse(HeadRefused(431, "header_bytes"))

    def handle_websocket_upgrade(self) -> None:
        # An established call is never counted against its address, nor timed out here. On the direct data
        # plane a handshake still counts until its 101 (or until it ends); the relay releases it then.
        self._cancel_head_timer()
        self._cancel_body_timer()
        take_over = self.guard.take_over
        if take_over is not None and take_over(self.transport, self.scope["method"], self.url, self.headers,
                                               self.server_state.default_headers, self._release_peer):
            self.connections.discard(self)  # the direct data plane has the transport now
            return
        self._release_peer()
        super().handle_websocket_upgrade()

    # --- parser callbacks ------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._field_bytes = 0
        if self._head_timer is None:  # a later request on a kept-alive connection: timed from its first byte
            self._head_timer = self.loop.call_later(self._header_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self._max_url:
            raise HeadRefused(414, "request_line")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._field_bytes += len(name) + len(value) + 4
        if self._field_bytes + len(self.url) > self._max_head or len(self.headers) >= self._max_headers:
            raise HeadRefused(431, "header_fields")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._head_bytes = None
        if self.parser.should_upgrade() and self._should_upgrade():
            super().on_headers_complete()  # a WebSocket handshake: no body, never refused by the HTTP bound
            return
        peer = self._peer
        if peer is not None and self.guard.held(peer) > self.guard.settings.max_http_connections_per_address:
            raise HeadRefused(503, "http_connections_per_address")
        has_body = False
        for name, value in self.headers:  # lower-cased; llhttp has checked Content-Length is one number
            if name == b"content-length":
                length = int(value)
                has_body = length > 0
                if length > self._max_body and length > self._limit_for_this_request():
                    raise HeadRefused(413, "body_bytes")  # before the app sees it, and before any body is read
            elif name == b"transfer-encoding":
                has_body = True
        super().on_headers_complete()
        if has_body:
            self._body_limit = self._limit_for_this_request()
            self._body_bytes = 0
            now = self.loop.time()
            self._body_last = now
            self._body_deadline = now + self._body_timeout
            self._body_timer = self.loop.call_later(self._body_idle_timeout, self._body_timer_fired)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._body_limit:  # a chunked body; a Content-Length one was checked with its head
            raise HeadRefused(413, "body_bytes", in_body=True)
        self._body_last = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._head_bytes = 0  # whatever follows is the next request's head
        self._cancel_body_timer()
        super().on_message_complete()

    def _limit_for_this_request(self) -> int:
        url = self.url
        if (url.startswith(REPORT_VERIFY) and (len(url) == len(REPORT_VERIFY) or url[len(REPORT_VERIFY)] == 63)
                and self.parser.get_method() == b"POST"):  # 63: "?"
            return self.guard.settings.max_report_body_bytes
        return self._max_body

    # --- body timeout ----------------------------------------------------------------------------------

    def _body_timer_fired(self) -> None:
        self._body_timer = None
        now = self.loop.time()
        cycle = self.cycle
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            # voicelog stopped reading until the app takes what it has (or the client waits for our 100
            # Continue): not the client's delay. Time it again from here.
            self._body_last = now
            self._body_deadline = max(self._body_deadline, now + self._body_idle_timeout)
        elif now >= self._body_deadline or now - self._body_last >= self._body_idle_timeout:
            self._refuse_body(HeadRefused(408, "body_timeout", in_body=True))
            return
        due = min(self._body_last + self._body_idle_timeout, self._body_deadline)
        self._body_timer = self.loop.call_later(max(due - now, 0.0), self._body_timer_fired)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    # --- refusals --------------------------------------------------------------------------------------

    def _refuse_body(self, refusal: HeadRefused) -> None:
        """A body too slow or too large. The app has the request: if it has not started answering, its request
        ends (it reads a disconnect, whatever it still answers is dropped) and the client gets `refusal`;
        otherwise, or while an earlier pipelined response is being written, the connection is just closed."""
        self._cancel_body_timer()
        cycle = self.cycle
        if cycle.response_started or self.pipeline:
            self._refused = True
            self.guard.note_refusal(refusal.reason, self.client[0] if self.client else None)
            if not self.transport.is_closing():
                self.transport.close()
            return
        cycle.disconnected = True
        cycle.message_event.set()
        self._refuse(refusal, answered_for=True)

    def _refuse(self, refusal: HeadRefused, *, answered_for: bool = False) -> None:
        """Answer with `refusal.status` and close; keep reading (and dropping) until the client stops or the
        head timer ends it, since closing with unread bytes would reset the connection before it reads the
        answer. `answered_for`: the current cycle's own response is dropped and this is it."""
        self._refused = True
        self._head_bytes = None
        self._cancel_body_timer()
        self.guard.note_refusal(refusal.reason, self.client[0] if self.client else None)
        if self.transport.is_closing():
            return
        if ((not answered_for and self.cycle is not None and not self.cycle.response_complete)
                or not self.transport.can_write_eof()):
            self.transport.close()  # a response is still being written (pipelining), or TLS: just close
            return
        phrase = http.HTTPStatus(refusal.status).phrase.encode("ascii")
        content = [STATUS_LINE[refusal.status]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: ", str(len(phrase)).encode("ascii"), b"\r\n",
                    b"connection: close\r\n\r\n", phrase]
        self.transport.write(b"".join(content))
        self.transport.write_eof()
        self.flow.resume_reading()
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._header_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._refused:
            self.guard.note_refusal("header_timeout", self.client[0] if self.client else None)
        if not self.transport.is_closing():
            self.transport.close()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _release_peer(self) -> None:
        if self._peer is not None:
            self.guard.release(self._peer)
            self._peer = None


def guarded_http_protocol(settings: ServerSettings,
                          take_over: TakeOver | None = None) -> type[GuardedHttpToolsProtocol]:
    """The `http=` protocol class for one uvicorn server; its counts per address are that server's own.
    `take_over`: the relay's direct data plane, offered every WebSocket upgrade first."""

    class ServerHttpProtocol(GuardedHttpToolsProtocol):
        guard = ConnectionGuard(settings, take_over)


    return ServerHttpProtocol
