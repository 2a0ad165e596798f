"""WebSocket routes that look exactly like the pipeline's, under /resources/{resource}/..."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import unquote, urlsplit

import httptools
from fastapi import APIRouter, WebSocket
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.clock import Clock
from app.context import ContextDep
from app.logs import get_logger, redact_query
from app.loop_lag import LoopLagMonitor
from app.metrics import RelayMetrics
from app.relay.handshakes import AsgiHandshake, ClientHandshake, DirectHandshake
from app.relay.registry import Admission, SessionRegistry
from app.relay.session import SessionStats
from app.relay.settings import RelaySettings
from app.relay.tap import Direction, FrameTap, SessionInfo, TapFactory
from app.relay.upstream import UpstreamError, build_target
from app.request_id import RequestId, new_request_id
from app.resources.directory import DirectoryUnavailable, ResourceDirectory
from app.tracing.provider import Tracing

log = get_logger("voicelog.relay")
router = APIRouter()

RELAY_SUFFIXES = ("/voice-live/realtime", "/v1/realtime", "/openai/realtime", "/openai/v1/realtime")
_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
TAP_OPEN_TIMEOUT_S = 0.5
RETRY_AFTER_BUSY_S = 1


class Relay:
    """Session admission and bookkeeping; the frame pumps live in RelaySession."""

    def __init__(self, *, settings: RelaySettings, clock: Clock, session_factory: async_sessionmaker[AsyncSession],
                 metrics: RelayMetrics, tap_factory: TapFactory, tracing: Tracing,
                 resources: ResourceDirectory, loop_lag: LoopLagMonitor) -> None:
        self.settings = settings
        self.clock = clock
        self.session_factory = session_factory
        self.resources = resources
        self.metrics = metrics
        self.tap_factory = tap_factory
        self.registry = SessionRegistry()
        self.loop_lag = loop_lag
        self._tasks: set[asyncio.Task[None]] = set()  # direct sessions, held until they end
        self.tracing = tracing

    async def handle(self, websocket: WebSocket, resource_name: str, suffix: str) -> None:
        """A session on the ASGI data plane (Starlette's WebSocket, `websockets` upstream)."""
        await self.handle_handshake(AsgiHandshake(websocket), resource_name, suffix)

    async def handle_handshake(self, handshake: ClientHandshake, resource_name: str, suffix: str) -> None:
        """One session, traced as one SERVER span from handshake to close (refusals included)."""
        span = self.tracing.tracer.start_span(
            "relay.session", kind=SpanKind.SERVER, context=self.tracing.parent(handshake.raw_headers),
            attributes={"voicelog.relay.path": suffix},  # the resource once it is known: no caller's string
        )
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                await self._handle(handshake, resource_name, suffix, span)
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR))
            raise
        finally:
            span.end()

    def take_over(self, transport: asyncio.Transport, method: str, target: bytes, headers: list[tuple[bytes, bytes]],
                  default_headers: list[tuple[bytes, bytes]], release: Callable[[], None]) -> bool:
        """The direct data plane's entry: called by the HTTP protocol at a WebSocket upgrade. Returns False
        for a path that is not under /resources/{name}/ (the ASGI app answers it, as it routes it). `release`
        ends the connection's count against its address; called once, at the 101 or when it closes."""
        try:
            url = httptools.parse_url(target)
            if url.path is None:  # an absolute-form target without a path
                return False
            path = unquote(url.path.decode("ascii"))
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError, ValueError):
            return False
        if not path.startswith("/resources/"):
            return False
        name, slash, tail = path[len("/resources/"):].partition("/")
        if not name or not slash:
            return False
        # The query as sent, whatever follows (a `#` makes no valid upstream URL: refused as on the ASGI plane).
        handshake = DirectHandshake(transport, headers=headers, query=target.partition(b"?")[2],
                                    default_headers=default_headers,
                                    max_message=self.settings.relay_max_message_bytes, release=release)
        suffix = "/" + tail
        problem = handshake.bad_request(method)
        if problem is not None:
            work = self.refuse(handshake, 400, "bad_handshake", problem)
        elif suffix not in RELAY_SUFFIXES:
            work = self.refuse(handshake, 404, "unknown_path", f"Relayed paths are {', '.join(RELAY_SUFFIXES)}.")
        else:
            work = self.handle_handshake(handshake, name, suffix)
        task = asyncio.get_running_loop().create_task(self._guarded(handshake, work), name="relay-handshake")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _guarded(self, handshake: DirectHandshake, work: Coroutine[Any, Any, None]) -> None:
        """A direct session's task: whatever goes wrong, the connection ends (never an orphaned socket)."""
        try:
            await work
        except Exception as exc:
            self.metrics.errors.labels("internal_error").inc()
            log.error("relay.session.failed", error=type(exc).__name__)
            handshake.abort()

    def busy(self) -> str | None:
        """Why this process takes no new call now (its session limit, or an event loop running late), or None.
        Refused before the handshake, so the caller's retry lands on another replica; an admitted call is
        never refused later."""
        if len(self.registry) + self.registry.admitting >= self.settings.relay_max_sessions:
            return "session_limit"
        if self.loop_lag.recent_lag_s() > self.settings.relay_busy_loop_lag_s:
            return "loop_late"
        return None

    async def _handle(self, handshake: ClientHandshake, resource_name: str, suffix: str, span: Span) -> None:
        if self.registry.draining:
            await self.refuse(handshake, 503, "draining", "The relay is shutting down; reconnect.", span=span)
            return
        busy = self.busy()
        if busy is not None:
            self.metrics.errors.labels(f"busy_{busy}").inc()
            await self.refuse(handshake, 503, "relay_busy", "This relay is at its capacity; retry, and another "
                              "replica will take the call.", span=span, retry_after=RETRY_AFTER_BUSY_S)
            return
        admission = self.registry.admit()
        try:
            await self._admit(handshake, resource_name, suffix, span, admission)
        finally:
            admission.done()

    async def _admit(self, handshake: ClientHandshake, resource_name: str, suffix: str, span: Span,
                     admission: Admission) -> None:
        started = time.monotonic()
        try:
            resource = await self.resources.find(resource_name, self.session_factory)
        except DirectoryUnavailable:
            self.metrics.errors.labels("resources_unavailable").inc()
            await self.refuse(handshake, 503, "resources_unavailable",
                            "The relay cannot look this resource up right now; retry shortly.", span=span)
            return
        if resource is None:
            self.metrics.errors.labels("unknown_resource").inc()
            await self.refuse(handshake, 404, "resource_not_found", "No such resource.", span=span)
            return

        request_id = new_request_id()
        correlation = handshake.header("x-ms-client-request-id")
        if correlation is not None and not _CORRELATION_ID.fullmatch(correlation):
            correlation = None
        target = build_target(
            endpoint=resource.upstream_endpoint,
            suffix=suffix,
            query=handshake.query,
            client_headers=handshake.raw_headers,
            request_id=request_id,
        )
        bound = log.bind(request_id=request_id, resource=resource.name, path=suffix)
        span.set_attributes({"voicelog.resource": resource.name, "voicelog.request_id": request_id,
                             "voicelog.region": resource.region})
        if correlation is not None:
            span.set_attribute("voicelog.correlation_id", correlation)
        try:
            # Never the SDK's automatic status on exception: its description is the exception's message.
            with self.tracing.tracer.start_as_current_span(
                "relay.upstream.connect", kind=SpanKind.CLIENT, record_exception=False,
                set_status_on_exception=False, attributes=upstream_address(resource.upstream_endpoint),
            ) as connect_span:
                try:
                    upstream = await handshake.open_upstream(target, self.settings)
                except UpstreamError as exc:
                    connect_span.set_attributes({"error.type": exc.reason, "http.response.status_code": exc.status})
                    connect_span.set_status(Status(StatusCode.ERROR))
                    raise
        except UpstreamError as exc:
            self.metrics.errors.labels(exc.reason).inc()
            bound.warning("relay.upstream.failed", reason=exc.reason, status=exc.status)
            await self.refuse(
                handshake, exc.status, exc.reason, "The upstream did not accept the session.",
                request_id=request_id, span=span,
            )
            return

        if self.registry.draining:  # the drain began while the upstream answered: no new call now
            await handshake.drop_upstream(upstream)
            await self.refuse(handshake, 503, "draining", "The relay is shutting down; reconnect.",
                              request_id=request_id, span=span)
            return
        response_headers = [(b"x-ms-request-id", request_id.encode()), (b"x-request-id", request_id.encode())]
        info = SessionInfo(
            request_id=request_id,
            correlation_id=correlation,
            resource_id=resource.id,
            resource_name=resource.name,
            region=resource.region,
            path=suffix,
            started_at=self.clock.now(),
        )
        try:
            await handshake.accept(upstream, response_headers)
        except Exception:
            self.metrics.errors.labels("client_gone_at_accept").inc()
            span.set_attribute("voicelog.relay.ended_by", "client_gone_at_accept")
            return
        tap = await self._open_tap(info)
        span.set_attribute("voicelog.recording", tap is not None)
        session = handshake.session(upstream, info=info, metrics=self.metrics, tap=tap, settings=self.settings)
        self.registry.add(session)
        admission.done()  # counted as a session from here
        self.metrics.active_sessions.inc()
        self.metrics.sessions_total.inc()
        bound.info(
            "relay.session.opened",
            correlation_id=correlation,
            query=redact_query(handshake.query.decode("latin-1")),
            recording=tap is not None,
            setup_ms=round((time.monotonic() - started) * 1000, 2),
        )
        try:
            stats = await session.run()
        finally:
            self.registry.discard(session)
            self.metrics.active_sessions.dec()
        span.set_attributes(session_attributes(stats))
        bound.info(
            "relay.session.closed",
            ended_by=stats.ended_by,
            client_close=stats.client_close,
            upstream_close=stats.upstream_close,
            frames_c2s=stats.frames[Direction.CLIENT_TO_SERVICE],
            frames_s2c=stats.frames[Direction.SERVICE_TO_CLIENT],
            bytes_c2s=stats.bytes[Direction.CLIENT_TO_SERVICE],
            bytes_s2c=stats.bytes[Direction.SERVICE_TO_CLIENT],
            duration_s=round(time.monotonic() - started, 3),
        )

    async def _open_tap(self, info: SessionInfo) -> FrameTap | None:
        """C8: the recorder gets a short moment to attach; if it fails or is slow, we relay without it."""
        with self.tracing.tracer.start_as_current_span("capture.open", record_exception=False,
                                                       set_status_on_exception=False) as span:
            try:
                return await asyncio.wait_for(self.tap_factory.open(info), TAP_OPEN_TIMEOUT_S)
            except Exception as exc:
                self.metrics.errors.labels("tap_open_failed").inc()
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR))
                log.warning("relay.tap.open_failed", request_id=info.request_id)
                return None

    async def deny(
        self, websocket: WebSocket, status: int, code: str, detail: str, request_id: RequestId | None = None,
        span: Span | None = None,
    ) -> None:
        """Refuse an ASGI handshake (the routes that are not relayed)."""
        await self.refuse(AsgiHandshake(websocket), status, code, detail, request_id, span)

    async def refuse(
        self, handshake: ClientHandshake, status: int, code: str, detail: str, request_id: RequestId | None = None,
        span: Span | None = None, retry_after: int | None = None,
    ) -> None:
        """Refuse the handshake with an HTTP status and problem+json."""
        if span is not None:
            span.set_attributes({"voicelog.relay.refused": code, "http.response.status_code": status})
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        body = {"type": f"https://voicelog.dev/problems/{code}", "title": detail, "status": status,
                "code": code, "detail": detail}
        headers: dict[str, str] = {"x-ms-request-id": request_id, "x-request-id": request_id} if request_id else {}
        if retry_after is not None:
            headers["retry-after"] = str(retry_after)
        await handshake.refuse(status, body, headers or None)


def upstream_address(endpoint: str) -> dict[str, str | int]:
    """`server.address` and `server.port` of the upstream; its path and query stay out of spans."""
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme in ("wss", "https") else 80)
    return {"server.address": parts.hostname or "", "server.port": port}


def session_attributes(stats: SessionStats) -> dict[str, str | int]:
    """How a session ended and how much it carried: counts and codes only."""
    out: dict[str, str | int] = {
        "voicelog.relay.ended_by": stats.ended_by,
        "voicelog.relay.frames_c2s": stats.frames[Direction.CLIENT_TO_SERVICE],
        "voicelog.relay.frames_s2c": stats.frames[Direction.SERVICE_TO_CLIENT],
        "voicelog.relay.bytes_c2s": stats.bytes[Direction.CLIENT_TO_SERVICE],
        "voicelog.relay.bytes_s2c": stats.bytes[Direction.SERVICE_TO_CLIENT],
    }
    if stats.client_close is not None:
        out["voicelog.relay.client_close_code"] = stats.client_close
    if stats.upstream_close is not None:
        out["voicelog.relay.upstream_close_code"] = stats.upstream_close
    return out


def _make_endpoint(suffix: str) -> Callable[[WebSocket, str, ContextDep], Awaitable[None]]:
    async def relay_endpoint(websocket: WebSocket, resource: str, ctx: ContextDep) -> None:
        await ctx.relay.handle(websocket, resource, suffix)

    relay_endpoint.__name__ = "relay" + re.sub(r"\W", "_", suffix)
    return relay_endpoint


for _suffix in RELAY_SUFFIXES:
    router.add_api_websocket_route("/resources/{resource}" + _suffix, _make_endpoint(_suffix))


@router.websocket("/resources/{resource}/{rest:path}")
async def unknown_relay_path(websocket: WebSocket, resource: str, rest: str,  # noqa: ARG001
                             ctx: ContextDep) -> None:
    """Only the pipeline's own realtime paths are relayed; anything else is a clear 404."""
    await ctx.relay.deny(websocket, 404, "unknown_path",
                                 f"Relayed paths are {', '.join(RELAY_SUFFIXES)}.")
