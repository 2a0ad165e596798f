"""The stand-in upstream's WebSocket server (`voicelog standin`, and inside `voicelog serve`)."""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from app.logs import get_logger
from app.relay.standin.protocol import AUDIO_DELTA_MS, RESPONSE_DELAY_S, PendingResponse, StandinSession

log = get_logger("voicelog.standin")

PROTOCOL_PATHS = {
    "/voice-live/realtime": False,
    "/openai/realtime": False,
    "/v1/realtime": True,
    "/openai/v1/realtime": True,
}
ECHO_QUERY = "x-standin-mode"
"""`?x-standin-mode=echo` on any protocol path: every frame is sent back untouched (benchmarks, tests);
`=realistic` or `=instant` chooses the turn timing of that session whatever the server's default."""
AUDIO_LEAD_S = 0.2
"""Realistic timing: response audio is sent this far ahead of real time, as pipelines buffer the client."""
AUDIO_DELTAS = frozenset({"response.audio.delta", "response.output_audio.delta"})


@dataclass
class ReceivedSession:
    """What the stand-in saw of one session (tests compare it with what the client sent)."""

    path: str
    query: dict[str, list[str]]
    headers: Headers
    frames: list[str | bytes] = field(default_factory=list)
    sent: list[str | bytes] = field(default_factory=list)
    close_code: int | None = None


@dataclass
class StandinOptions:
    api_key: str | None = None
    """If set, sessions must authenticate with it (api-key header or query, or a Bearer token)."""
    keep_frames: bool = False
    """Keep every frame received and sent per request id (tests only: unbounded)."""
    test_controls: bool = False
    """Honour `x-standin.close` events that make the server close with a chosen code (tests only)."""
    realistic: bool = False
    """Answer turns like a pipeline: after a delay, audio in real time, cut off (`response.done` cancelled) when
    the caller talks over it. Off: each answer is sent whole at once (what tests and benchmarks rely on)."""


class Standin:
    def __init__(self, options: StandinOptions | None = None) -> None:
        # Without options (the stand-in `voicelog serve` embeds), turns are realistic, so `make serve` shows
        # response delays, latencies and barge-ins in playback.
        self.options = options or StandinOptions(realistic=True)
        self.sessions: dict[str, ReceivedSession] = {}

    def _authorized(self, request: Request) -> bool:
        key = self.options.api_key
        if key is None:
            return True
        query = parse_qs(urlsplit(request.path).query)
        presented = [
            request.headers.get("api-key") or "",
            *query.get("api-key", []),
        ]
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            presented.append(auth[7:])
        return any(hmac.compare_digest(p.encode(), key.encode()) for p in presented if p)

    def process_request(self, _conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path not in PROTOCOL_PATHS:
            return _problem(HTTPStatus.NOT_FOUND, "not_found", "Unknown path.")
        if not self._authorized(request):
            return _problem(HTTPStatus.UNAUTHORIZED, "unauthorized", "Missing or invalid credentials.")
        return None

    async def handler(self, conn: ServerConnection) -> None:
        assert conn.request is not None  # noqa: S101 - set once the handshake completed
        parts = urlsplit(conn.request.path)
        request_id = conn.request.headers.get("x-ms-client-request-id") or f"anon-{id(conn)}"
        record: ReceivedSession | None = None
        if self.options.keep_frames:
            record = ReceivedSession(parts.path, parse_qs(parts.query), conn.request.headers)
            self.sessions[request_id] = record
        mode = parse_qs(parts.query).get(ECHO_QUERY, [""])[0]
        try:
            if mode == "echo":
                await self._echo(conn, record)
            else:
                model = parse_qs(parts.query).get("model", [None])[0]
                realistic = mode == "realistic" or (mode != "instant" and self.options.realistic)
                await self._converse(conn, StandinSession(model=model, ga_names=PROTOCOL_PATHS[parts.path],
                                                          realistic=realistic), record)
        except ConnectionClosed:
            pass
        finally:
            if record is not None:
                record.close_code = conn.close_code

    async def _echo(self, conn: ServerConnection, record: ReceivedSession | None) -> None:
        async for message in conn:
            if record is not None:
                record.frames.append(message)
                record.sent.append(message)
            await conn.send(message)

    async def _converse(self, conn: ServerConnection, session: StandinSession,
                        record: ReceivedSession | None) -> None:
        await self._send(conn, session.created(), record)
        playing: tuple[PendingResponse, asyncio.Event, asyncio.Task[None]] | None = None
        try:
            async for message in conn:
                if record is not None:
                    record.frames.append(message)
                if isinstance(message, bytes):
                    events = session.handle_binary()
                else:
                    if self.options.test_controls and await self._test_control(conn, message):
                        return
                    events = session.handle_text(message)
                for event in events:
                    await self._send(conn, event, record)
                if session.interrupted is not None and playing is not None:
                    response, stop, task = playing
                    stop.set()
                    await task
                    playing = None
                    if response.sent < len(response.events):
                        for event in session.cancelled(response):
                            await self._send(conn, event, record)
                    session.response_finished()
                if session.pending is not None:
                    response, session.pending = session.pending, None
                    stop = asyncio.Event()
                    playing = (response, stop, asyncio.create_task(self._play(conn, session, response, stop, record)))
        finally:
            if playing is not None:
                playing[1].set()
                await playing[2]

    async def _play(self, conn: ServerConnection, session: StandinSession, response: PendingResponse,
                    stop: asyncio.Event, record: ReceivedSession | None) -> None:
        """Realistic timing: wait, then send the response's events, its audio paced at real time (plus a lead).
        Stops between two events when `stop` is set; sends nothing after that."""
        loop = asyncio.get_running_loop()
        if await _stopped(stop, RESPONSE_DELAY_S):
            return
        audio_started, audio_s = loop.time(), 0.0
        try:
            for event in response.events:
                if event["type"] in AUDIO_DELTAS:
                    due = audio_started + audio_s - AUDIO_LEAD_S - loop.time()
                    if due > 0 and await _stopped(stop, due):
                        return
                    audio_s += AUDIO_DELTA_MS / 1000
                    response.audio_sent += 1
                if stop.is_set():
                    return
                await self._send(conn, event, record)
                response.sent += 1
        except ConnectionClosed:
            return
        session.response_finished()
    async def _test_control(self, conn: ServerConnection, message: str) -> bool:
        if '"x-standin.' not in message:
            return False
        event = json.loads(message)
        if event.get("type") == "x-standin.close":
            await conn.close(int(event.get("code", 1000)), str(event.get("reason", "")))
            return True
        if event.get("type") == "x-standin.binary":
            await conn.send(bytes(event.get("bytes", [])))
            return True
        return False

    @staticmethod
    async def _send(conn: ServerConnection, event: dict[str, object], record: ReceivedSession | None) -> None:
        text = json.dumps(event, separators=(",", ":"))
        if record is not None:
            record.sent.append(text)
        await conn.send(text)

    async def start(self, host: str, port: int) -> Server:
        server = await serve(
            self.handler,
            host,
            port,
            process_request=self.process_request,
            compression=None,
            max_size=4 * 1024 * 1024,
            max_queue=64,
            server_header="voicelog-standin",
        )
        log.info("standin.listening", host=host, port=bound_port(server))
        return server


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds` unless `stop` is set first; True if it was."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


def bound_port(server: Server) -> int:
    for sock in server.sockets:
        port: int = sock.getsockname()[1]
        return port
    raise RuntimeError("stand-in server has no socket")


def _problem(status: HTTPStatus, code: str, detail: str) -> Response:
    body = json.dumps({"status": int(status), "code": code, "detail": detail}).encode()
    headers = Headers([("Content-Type", "application/problem+json"), ("Content-Length", str(len(body)))])
    return Response(int(status), status.phrase, headers, body)
