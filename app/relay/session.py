"""One relayed session: two pumps, close propagation, timeouts. The hot path parses nothing.

Backpressure: each pump holds at most one frame in hand and awaits the other side's write (which
waits for the transport to drain below its high-water mark) before it reads the next one. Beyond that,
the receiving libraries buffer at most `relay_queue_frames` messages per direction before they stop
reading the socket, so a slow side slows the other down through TCP flow control instead of growing
memory. Relayed frames are never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from app.logs import get_logger
from app.metrics import RelayMetrics
from app.relay.tap import Direction, FrameTap, SessionInfo

log = get_logger("voicelog.relay")

# Close codes an endpoint may not put on the wire (RFC 6455 7.4.1).
_NO_STATUS = 1005
_ABNORMAL = 1006
_GOING_AWAY = 1001
_INTERNAL_ERROR = 1011


@dataclass
class SessionStats:
    frames: dict[Direction, int] = field(default_factory=lambda: dict.fromkeys(Direction, 0))
    bytes: dict[Direction, int] = field(default_factory=lambda: dict.fromkeys(Direction, 0))
    client_close: int | None = None
    upstream_close: int | None = None
    ended_by: str = ""


class RelaySession:
    """Carries frames both ways untouched until either side closes, a timeout fires, or we drain."""

    def __init__(
        self,
        *,
        websocket: WebSocket,
        upstream: ClientConnection,
        info: SessionInfo,
        metrics: RelayMetrics,
        tap: FrameTap | None,
        idle_timeout: float,
        max_session: float,
    ) -> None:
        self.websocket = websocket
        self.upstream = upstream
        self.info = info
        self.tap = tap
        self.stats = SessionStats()
        self._metrics = metrics
        self._idle_timeout = idle_timeout
        self._max_session = max_session
        self._started = time.monotonic()
        self._last_activity = self._started
        self._stop = asyncio.Event()
        self._stop_code = _GOING_AWAY
        self._stop_reason = ""
        self._tap_start_ns = time.monotonic_ns()

    def request_close(self, code: int, reason: str) -> None:
        """Ask the session to end (drain, admin); both sides get `code`."""
        self._stop_code, self._stop_reason = code, reason
        self._stop.set()

    async def run(self) -> SessionStats:
        c2s = asyncio.create_task(self._client_to_upstream(), name=f"c2s-{self.info.request_id}")
        s2c = asyncio.create_task(self._upstream_to_client(), name=f"s2c-{self.info.request_id}")
        stop = asyncio.create_task(self._stop.wait(), name=f"stop-{self.info.request_id}")
        try:
            await self._supervise(c2s, s2c, stop)
        finally:
            for task in (c2s, s2c, stop):
                task.cancel()
            await asyncio.gather(c2s, s2c, stop, return_exceptions=True)
            self._notify_tap_close()
        return self.stats

    async def _supervise(self, c2s: asyncio.Task[Any], s2c: asyncio.Task[Any], stop: asyncio.Task[Any]) -> None:
        pending: set[asyncio.Task[Any]] = {c2s, s2c, stop}
        while True:
            now = time.monotonic()
            deadline = min(self._last_activity + self._idle_timeout, self._started + self._max_session)
            done, pending = await asyncio.wait(
                pending, timeout=max(0.0, deadline - now), return_when=asyncio.FIRST_COMPLETED
            )
            if c2s in done:
                await self._client_closed(c2s)
                return
            if s2c in done:
                await self._upstream_closed(s2c)
                return
            if stop in done:
                self.stats.ended_by = "relay"
                await self._close_both(self._stop_code, self._stop_reason)
                return
            now = time.monotonic()
            if now >= self._started + self._max_session:
                self.stats.ended_by = "max_session"
                await self._close_both(_GOING_AWAY, "maximum session length reached")
                return
            if now >= self._last_activity + self._idle_timeout:
                self.stats.ended_by = "idle_timeout"
                await self._close_both(_GOING_AWAY, "idle timeout")
                return

    async def _client_to_upstream(self) -> tuple[int, str]:
        """Returns the client's close code and reason once it disconnects."""
        receive = self.websocket.receive
        send = self.upstream.send
        tap = self.tap
        frames = self._metrics.frames.labels(Direction.CLIENT_TO_SERVICE.value)
        nbytes = self._metrics.bytes.labels(Direction.CLIENT_TO_SERVICE.value)
        latency = self._metrics.added_latency.labels(Direction.CLIENT_TO_SERVICE.value)
        stats_frames = self.stats.frames
        stats_bytes = self.stats.bytes
        direction = Direction.CLIENT_TO_SERVICE
        while True:
            message = await receive()
            t0 = time.perf_counter()
            if message["type"] == "websocket.disconnect":
                return int(message.get("code") or _NO_STATUS), str(message.get("reason") or "")
            payload: str | bytes | None = message.get("text")
            if payload is None:
                payload = message.get("bytes") or b""
            await send(payload)
            latency.observe(time.perf_counter() - t0)
            self._last_activity = time.monotonic()
            size = len(payload)
            stats_frames[direction] += 1
            stats_bytes[direction] += size
            frames.inc()
            nbytes.inc(size)
            if tap is not None:
                self._tap_frame(direction, payload)

    async def _upstream_to_client(self) -> None:
        """Returns when the upstream closes (ConnectionClosed propagates to the supervisor)."""
        recv = self.upstream.recv
        send = self.websocket.send
        tap = self.tap
        frames = self._metrics.frames.labels(Direction.SERVICE_TO_CLIENT.value)
        nbytes = self._metrics.bytes.labels(Direction.SERVICE_TO_CLIENT.value)
        latency = self._metrics.added_latency.labels(Direction.SERVICE_TO_CLIENT.value)
        stats_frames = self.stats.frames
        stats_bytes = self.stats.bytes
        direction = Direction.SERVICE_TO_CLIENT
        while True:
            payload = await recv()
            t0 = time.perf_counter()
            if isinstance(payload, str):
                await send({"type": "websocket.send", "text": payload})
            else:
                await send({"type": "websocket.send", "bytes": payload})
            latency.observe(time.perf_counter() - t0)
            self._last_activity = time.monotonic()
            size = len(payload)
            stats_frames[direction] += 1
            stats_bytes[direction] += size
            frames.inc()
            nbytes.inc(size)
            if tap is not None:
                self._tap_frame(direction, payload)

    def _tap_frame(self, direction: Direction, payload: str | bytes) -> None:
        """C8: a failing tap is detached; the session never notices."""
        tap = self.tap
        if tap is None:
            return
        try:
            tap.on_frame(direction, time.monotonic_ns() - self._tap_start_ns, payload)
        except Exception:
            self.tap = None
            self._metrics.errors.labels("tap_failed").inc()
            log.warning("relay.tap.detached", request_id=self.info.request_id)

    def _notify_tap_close(self) -> None:
        tap = self.tap
        if tap is None:
            return
        try:
            tap.on_close(self.stats.client_close, self.stats.upstream_close, self.stats.ended_by)
        except Exception:
            self._metrics.errors.labels("tap_failed").inc()
            log.warning("relay.tap.close_failed", request_id=self.info.request_id)

    async def _client_closed(self, c2s: asyncio.Task[Any]) -> None:
        exc = c2s.exception()
        if exc is not None:
            # Sending upstream failed: the upstream went away while the client was talking.
            self.stats.ended_by = "upstream_lost"
            await self._upstream_gone(exc)
            return
        code, reason = c2s.result()
        self.stats.client_close = code
        self.stats.ended_by = "client"
        with contextlib.suppress(Exception):
            if code in (_NO_STATUS, _ABNORMAL):
                # Mirror "no status" as an empty close frame; an abnormal drop as going away.
                await self.upstream.close(_NO_STATUS if code == _NO_STATUS else _GOING_AWAY, "")
            else:
                await self.upstream.close(code, reason)

    async def _upstream_closed(self, s2c: asyncio.Task[Any]) -> None:
        exc = s2c.exception()
        if isinstance(exc, ConnectionClosed):
            await self._upstream_gone(exc)
            return
        # Sending to the client failed: the client is gone; tell the upstream.
        self.stats.ended_by = "client_lost"
        self._metrics.errors.labels("client_send_failed").inc()
        with contextlib.suppress(Exception):
            await self.upstream.close(_GOING_AWAY, "client gone")

    async def _upstream_gone(self, exc: BaseException) -> None:
        if isinstance(exc, ConnectionClosed) and exc.rcvd is not None:
            code, reason = exc.rcvd.code, exc.rcvd.reason
            self.stats.ended_by = self.stats.ended_by or "upstream"
        else:
            code, reason = _INTERNAL_ERROR, "upstream connection lost"
            self.stats.ended_by = "upstream_lost"
            self._metrics.errors.labels("upstream_lost").inc()
        self.stats.upstream_close = code
        if code in (_NO_STATUS, _ABNORMAL):
            code, reason = 1000, ""
        await self._close_client(code, reason)

    async def _close_client(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.websocket.send({"type": "websocket.close", "code": code, "reason": reason})

    async def _close_both(self, code: int, reason: str) -> None:
        await asyncio.gather(
            self._close_client(code, reason),
            self._close_upstream(code, reason),
            return_exceptions=True,
        )

    async def _close_upstream(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.upstream.close(code, reason)
