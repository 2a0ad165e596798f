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


class DirectionCounter:
    """Per-direction counts kept in plain ints on the hot path and published in batches.

    Prometheus children take a lock per update; publishing every FLUSH_EVERY frames (and at the end)
    keeps the relay's per-frame cost down. Latency is observed on one frame in SAMPLE_EVERY.
    """

    FLUSH_EVERY = 64
    SAMPLE_EVERY = 8

    __slots__ = ("_bytes_metric", "_frames_metric", "_latency", "bytes", "frames", "pending_bytes",
                 "pending_frames")

    def __init__(self, metrics: RelayMetrics, direction: Direction) -> None:
        self._frames_metric = metrics.frames.labels(direction.value)
        self._bytes_metric = metrics.bytes.labels(direction.value)
        self._latency = metrics.added_latency.labels(direction.value)
        self.frames = 0
        self.bytes = 0
        self.pending_frames = 0
        self.pending_bytes = 0

    def count(self, payload: str | bytes, t0: float) -> None:
        self.count_size(len(payload), t0)

    def count_size(self, size: int, t0: float) -> None:
        self.frames += 1
        self.bytes += size
        self.pending_frames += 1
        self.pending_bytes += size
        if self.frames % self.SAMPLE_EVERY == 0:
            now = time.perf_counter()
            self._latency.observe(now - t0)
        if self.pending_frames >= self.FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.pending_frames:
            self._frames_metric.inc(self.pending_frames)
            self._bytes_metric.inc(self.pending_bytes)
            self.pending_frames = self.pending_bytes = 0


@dataclass
class SessionStats:
    frames: dict[Direction, int] = field(default_factory=dict)
    bytes: dict[Direction, int] = field(default_factory=dict)
    client_close: int | None = None
    upstream_close: int | None = None
    ended_by: str = ""


class TapGuard:
    """The tap as both data planes' sessions call it (C8): a failing tap is detached, the call never notices."""

    tap: FrameTap | None
    info: SessionInfo
    stats: SessionStats
    _metrics: RelayMetrics
    _tap_start_ns: int

    def tap_frame(self, direction: Direction, payload: bytes, text: bool) -> None:
        tap = self.tap
        if tap is None:
            return
        try:
            tap.on_frame(direction, time.monotonic_ns() - self._tap_start_ns, payload, text)
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


class RelaySession(TapGuard):
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
        self._counters = {d: DirectionCounter(metrics, d) for d in Direction}
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
            for direction, counter in self._counters.items():
                counter.flush()
                self.stats.frames[direction] = counter.frames
                self.stats.bytes[direction] = counter.bytes
            self._notify_tap_close()
        return self.stats

    def _frames_so_far(self) -> int:
        return sum(c.frames for c in self._counters.values())

    async def _supervise(self, c2s: asyncio.Task[Any], s2c: asyncio.Task[Any], stop: asyncio.Task[Any]) -> None:
        """Waits for an end; checks idleness every quarter idle timeout (no per-frame clock reads)."""
        pending: set[asyncio.Task[Any]] = {c2s, s2c, stop}
        check_every = self._idle_timeout / 4
        last_active = self._started
        last_frames = 0
        while True:
            now = time.monotonic()
            wake = min(now + check_every, self._started + self._max_session)
            done, pending = await asyncio.wait(
                pending, timeout=max(0.0, wake - now), return_when=asyncio.FIRST_COMPLETED
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
            frames = self._frames_so_far()
            if frames != last_frames:
                last_frames, last_active = frames, now
            if now >= last_active + self._idle_timeout:
                self.stats.ended_by = "idle_timeout"
                await self._close_both(_GOING_AWAY, "idle timeout")
                return

    async def _client_to_upstream(self) -> tuple[int, str]:
        """Returns the client's close code and reason once it disconnects."""
        receive = self.websocket.receive
        send = self.upstream.send
        counter = self._counters[Direction.CLIENT_TO_SERVICE]
        while True:
            message = await receive()
            t0 = time.perf_counter()
            if message["type"] == "websocket.disconnect":
                return int(message.get("code") or _NO_STATUS), str(message.get("reason") or "")
            payload: str | bytes | None = message.get("text")
            if payload is None:
                payload = message.get("bytes") or b""
            await send(payload)
            counter.count(payload, t0)
            if self.tap is not None:
                self._tap_message(Direction.CLIENT_TO_SERVICE, payload)

    async def _upstream_to_client(self) -> None:
        """Returns when the upstream closes (ConnectionClosed propagates to the supervisor)."""
        recv = self.upstream.recv
        send = self.websocket.send
        counter = self._counters[Direction.SERVICE_TO_CLIENT]
        while True:
            payload = await recv()
            t0 = time.perf_counter()
            if isinstance(payload, str):
                await send({"type": "websocket.send", "text": payload})
            else:
                await send({"type": "websocket.send", "bytes": payload})
            counter.count(payload, t0)
            if self.tap is not None:
                self._tap_message(Direction.SERVICE_TO_CLIENT, payload)

    def _tap_message(self, direction: Direction, payload: str | bytes) -> None:
        """The ASGI plane's libraries hand text over decoded: the tap takes it as UTF-8 bytes."""
        if isinstance(payload, str):
            self.tap_frame(direction, payload.encode(), True)
        else:
            self.tap_frame(direction, payload, False)

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
