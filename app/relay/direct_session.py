"""One directly relayed session: the two legs joined, close propagation, timeouts, counts and the tap.

The same promises as `RelaySession` (the ASGI data plane), kept by callbacks instead of pump tasks: a close
from either side is passed on with its code and reason, idle and maximum-length timeouts close both sides with
1001, `request_close` (drain, admin) closes both with the code given, and a failing tap is detached (C8).
"""

from __future__ import annotations

import asyncio
import time

from app.logs import get_logger
from app.metrics import RelayMetrics
from app.relay.legs import ClientLeg, Leg, UpstreamLeg
from app.relay.session import _ABNORMAL, _GOING_AWAY, _INTERNAL_ERROR, _NO_STATUS, SessionStats, TapGuard
from app.relay.tap import Direction, FrameTap, SessionInfo

log = get_logger("voicelog.relay")

PUBLISH_EVERY_S = 1.0


class DirectSession(TapGuard):
    """Carries frames both ways until either side closes, a timeout fires, or we drain."""

    def __init__(self, *, client: ClientLeg, upstream: UpstreamLeg, info: SessionInfo, metrics: RelayMetrics,
                 tap: FrameTap | None, idle_timeout: float, max_session: float,
                 ping_interval: float | None) -> None:
        self.client = client
        self.upstream = upstream
        self.info = info
        self.tap = tap
        self.stats = SessionStats()
        self._metrics = metrics
        self._idle_timeout = idle_timeout
        self._max_session = max_session
        self._ping_interval = ping_interval
        self._started = time.monotonic()
        self._legs: dict[Direction, Leg] = {Direction.CLIENT_TO_SERVICE: client,
                                            Direction.SERVICE_TO_CLIENT: upstream}
        self._latency = {d: metrics.added_latency.labels(d.value) for d in Direction}
        # Each direction's frame and byte counters, looked up once: `labels()` takes a lock and hashes per call.
        self._counters = {d: (metrics.frames.labels(d.value), metrics.bytes.labels(d.value)) for d in Direction}
        self._published = dict.fromkeys(Direction, (0, 0))
        self._tap_start_ns = time.monotonic_ns()
        self._ending = False
        self._timer: asyncio.TimerHandle | None = None
        self._last_frames = 0
        self._last_active = self._started

    # --- lifecycle -------------------------------------------------------------------------------------

    async def run(self) -> SessionStats:
        """Join the legs, relay until both connections are closed, then publish the counts and close the tap."""
        for leg, peer in ((self.client, self.upstream), (self.upstream, self.client)):
            leg.session, leg.peer = self, peer
        self.upstream.keep_alive(self._ping_interval)
        self.client.keep_alive(self._ping_interval)
        self._schedule_check()
        if self.client.state == "closed":  # gone before or while its 101 was written
            self._client_ended(1006, "")
        if self.upstream.state == "closed":
            if self._end("upstream_lost"):  # gone between its handshake and the client's
                self._upstream_lost()
        else:
            self.upstream.start()
        self.client.start()
        try:
            await asyncio.gather(self.client.closed, self.upstream.closed)
        finally:
            if self._timer is not None:
                self._timer.cancel()
            for leg in (self.client, self.upstream):
                leg.session = None
                leg.abort()
            self._publish()
            for direction, source in self._legs.items():
                self.stats.frames[direction] = source.frames
                self.stats.bytes[direction] = source.bytes
            self._notify_tap_close()
        return self.stats

    def request_close(self, code: int, reason: str) -> None:
        """Ask the session to end (drain, admin); both sides get `code`."""
        if self._end("relay"):
            self._close_both(code, reason)

    # --- the hot path ----------------------------------------------------------------------------------

    def sample_latency(self, direction: Direction, seconds: float) -> None:
        self._latency[direction].observe(seconds)

    # --- how a session ends ----------------------------------------------------------------------------

    def leg_closed(self, leg: Leg, code: int, reason: str) -> None:
        """`leg`'s peer sent a close frame: answer it with its own code and pass it on."""
        if leg is self.client:
            self.client.close(code, reason)
            self._client_ended(code, reason)
        else:
            self.upstream.close(code, reason)
            self._upstream_ended(code, reason)

    def leg_failed(self, leg: Leg, code: int) -> None:
        """`leg`'s peer broke the protocol; it was told `code`."""
        if leg is self.client:
            self._client_ended(code, "")
        elif self._end("upstream_lost"):
            self._upstream_lost()

    def leg_lost(self, leg: Leg) -> None:
        """`leg`'s connection dropped without a close frame."""
        if leg is self.client:
            self._client_ended(_ABNORMAL, "")
        elif self._end("upstream_lost"):
            self._upstream_lost()

    def _client_ended(self, code: int, reason: str) -> None:
        if not self._end("client"):
            return
        self.stats.client_close = code
        if code in (_NO_STATUS, _ABNORMAL):
            # Mirror "no status" as an empty close frame; an abnormal drop as going away.
            self.upstream.close(_NO_STATUS if code == _NO_STATUS else _GOING_AWAY, "")
        else:
            self.upstream.close(code, reason)

    def _upstream_ended(self, code: int, reason: str) -> None:
        if not self._end("upstream"):
            return
        self.stats.upstream_close = code
        if code in (_NO_STATUS, _ABNORMAL):
            code, reason = 1000, ""
        self.client.close(code, reason)

    def _upstream_lost(self) -> None:
        self.stats.upstream_close = _INTERNAL_ERROR
        self._metrics.errors.labels("upstream_lost").inc()
        self.client.close(_INTERNAL_ERROR, "upstream connection lost")

    def _end(self, ended_by: str) -> bool:
        """The first end wins: later ones only finish closing."""
        if self._ending:
            return False
        self._ending = True
        self.stats.ended_by = ended_by
        return True

    def _close_both(self, code: int, reason: str) -> None:
        self.client.close(code, reason)
        self.upstream.close(code, reason)

    # --- timeouts --------------------------------------------------------------------------------------

    def _publish(self) -> None:
        """Frame and byte counts reach Prometheus here, once a second and at the end, not per frame."""
        for direction, leg in self._legs.items():
            frames, size = self._published[direction]
            if leg.frames != frames:
                frame_counter, byte_counter = self._counters[direction]
                frame_counter.inc(leg.frames - frames)
                byte_counter.inc(leg.bytes - size)
                self._published[direction] = (leg.frames, leg.bytes)

    def _schedule_check(self) -> None:
        """Counts are published and idleness checked every second (no per-frame clock reads)."""
        now = time.monotonic()
        wake = min(now + min(PUBLISH_EVERY_S, self._idle_timeout / 4), self._started + self._max_session)
        self._timer = asyncio.get_running_loop().call_later(max(0.0, wake - now), self._check)

    def _check(self) -> None:
        self._timer = None
        if self._ending:
            return
        self._publish()
        now = time.monotonic()
        if now >= self._started + self._max_session:
            if self._end("max_session"):
                self._close_both(_GOING_AWAY, "maximum session length reached")
            return
        frames = self.client.frames + self.upstream.frames
        if frames != self._last_frames:
            self._last_frames, self._last_active = frames, now
        if now >= self._last_active + self._idle_timeout:
            if self._end("idle_timeout"):
                self._close_both(_GOING_AWAY, "idle timeout")
            return
        self._schedule_check()
