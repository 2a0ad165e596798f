"""The benchmarks' apparatus on picows (Cython WebSocket framing): an echo upstream and the load generator.

At 400 sessions x one 20 ms frame each way, the `websockets` apparatus (pure-Python framing: the load
generator's client and `voicelog standin` in echo mode) takes more than one of this machine's two cores by
itself, so the relay under test, and the nginx anchor, were measured on a saturated machine. The same
apparatus with compiled framing and callbacks (no task per frame, no task per session's reading) leaves the
cores to what is measured. `relay_latency.py` uses it unless told `--apparatus websockets`
(or `VOICELOG_BENCH_APPARATUS=websockets`, for the scripts that import its load).

- `echo`: an upstream that accepts a WebSocket on any path, ignores every header (api-key, Authorization),
  sends each data frame back as it came (opcode, FIN bit, byte-identical payload: a fragmented message comes
  back frame by frame), answers a ping with a pong (picows' auto pong) and a close with the same close
  payload, then drops the connection. It logs nothing of what it carries.
- `run_session`: one session of `relay_latency.one_session`'s load, same schedule and same figures.
- `selfcheck`: sends text, binary, empty, fragmented and 1 MiB frames, a ping and a close straight to an echo
  server, compares what comes back byte for byte, then runs one short load session against it.

    .venv/bin/python ops/bench/picows_apparatus.py echo --port 9100
    .venv/bin/python ops/bench/picows_apparatus.py selfcheck [--port 9100]   # without: an in-process echo
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import socket
import sys
import time

import uvloop
from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_connect,
    ws_create_server,
)
from relay_latency import FRAME_BYTES, FRAME_MS, WARMUP_FRAMES
from websockets.http11 import USER_AGENT

MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # as the websockets load generator's max_size
DATA = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION)
SEQ = slice(42, 50)  # '{"type":"input_audio_buffer.append","id":"NNNNNNNN",...': where a frame's seq is
CLOSE_TIMEOUT_S = 10.0  # as websockets' close_timeout: how long the closing handshake may take
OPEN_TIMEOUT_S = 10.0  # as websockets' open_timeout
PING_S = 20.0
"""Keepalive pings on both ends, as the websockets client and stand-in send them (ping_interval and ping_timeout
20 s); picows waits for the pong before its next interval, so a ping every 40 s rather than 20 s."""
COPY_ABOVE = 8192
"""picows copies a server frame's payload of up to 8 KiB into its own buffer; a larger one is handed to the
transport as it is, and the received frame's memory is reused once `on_ws_frame` returns: copy those first."""


class Echo(WSListener):
    """One connection of the echo upstream: every frame back as it came, from the frame callback."""

    def __init__(self) -> None:
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type in DATA:
            payload = (frame.get_payload_as_memoryview() if frame.payload_size <= COPY_ABOVE
                       else frame.get_payload_as_bytes())
            transport.send(msg_type, payload, frame.fin)
        elif msg_type is WSMsgType.CLOSE:
            # the received close payload as it is (code and reason, or empty), as `websockets` answers a close
            transport.send(WSMsgType.CLOSE, frame.get_payload_as_bytes())
            transport.disconnect()
        # PING: picows answers with a PONG (enable_auto_pong); PONG needs nothing

    # backpressure, as `await send()` in the websockets stand-in: stop reading while the client is not
    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.underlying_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.underlying_transport.resume_reading()


async def start_echo(port: int, host: str = "127.0.0.1") -> asyncio.Server:
    """The echo upstream listening on `host:port`; any path is accepted (the relay appends its own)."""

    def listener_factory(_request: WSUpgradeRequest) -> Echo:
        return Echo()

    server: asyncio.Server = await ws_create_server(listener_factory, host, port, max_frame_size=MAX_MESSAGE_BYTES,
                                                    backlog=1024, enable_auto_ping=True,
                                                    auto_ping_strategy=WSAutoPingStrategy.PING_PERIODICALLY,
                                                    auto_ping_idle_timeout=PING_S, auto_ping_reply_timeout=PING_S)
    return server


async def serve_echo(port: int) -> None:
    server = await start_echo(port)
    async with server:
        await server.serve_forever()


class LoadSession(WSListener):
    """One session of the load: a frame every FRAME_MS on a fixed schedule from its start (a timer, not a task),
    the round trip of each echoed frame recorded from the frame callback."""

    def __init__(self, n: int, audio: bytes, rtts: list[float], steady: list[float] | None) -> None:
        self.n = n
        self.head = b'{"type":"input_audio_buffer.append","id":"'
        self.tail = b'","audio":"' + audio + b'"}'
        self.rtts = rtts
        self.steady = steady
        self.sent_at: dict[int, float] = {}
        self.transport: WSTransport | None = None
        self.loop = asyncio.get_running_loop()
        self.sending_done: asyncio.Future[None] = self.loop.create_future()
        self.disconnected: asyncio.Future[None] = self.loop.create_future()
        self.t0 = 0.0
        self.seq = 0
        self.timer: asyncio.Handle | None = None  # the next `send_due`, at most one pending
        self.paused = False
        self.recording = True
        self.partial: bytearray | None = None  # the start of a fragmented message, until its last frame

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def start(self) -> None:
        self.t0 = self.loop.time()
        self.send_due()

    def send_due(self, timer_fired: bool = False) -> None:
        """Send every frame whose time has come (as the websockets session, which sleeps only when early); the
        frame a timer was set for is sent when the timer fires, as after `asyncio.sleep`, even if the loop's
        millisecond timers fire a fraction early (re-arming then would spin until the exact time)."""
        self.timer = None
        transport = self.transport
        if transport is None or self.paused or self.sending_done.done():
            return
        interval = FRAME_MS / 1000
        while self.seq < self.n:
            when = self.t0 + self.seq * interval
            if not timer_fired and when > self.loop.time():
                self.timer = self.loop.call_at(when, self.send_due, True)
                return
            timer_fired = False
            seq = self.seq
            self.sent_at[seq] = time.perf_counter()
            transport.send(WSMsgType.TEXT, b"%b%08d%b" % (self.head, seq, self.tail))
            self.seq += 1
            if self.paused:  # the send filled the write buffer: wait for it to drain, as `await ws.send` does
                break
        if self.seq >= self.n:
            self.sending_done.set_result(None)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type in DATA:
            if frame.fin and msg_type is not WSMsgType.CONTINUATION:
                self.received(bytes(frame.get_payload_as_memoryview()[SEQ]))
            elif msg_type is not WSMsgType.CONTINUATION:
                self.partial = bytearray(frame.get_payload_as_memoryview()[:SEQ.stop])
            elif self.partial is not None:
                if len(self.partial) < SEQ.stop:
                    self.partial += frame.get_payload_as_memoryview()[:SEQ.stop - len(self.partial)]
                if frame.fin:
                    self.received(bytes(self.partial[SEQ]))
                    self.partial = None
        elif msg_type is WSMsgType.CLOSE:
            if not transport.is_close_frame_sent:  # the server closed first: answer, as websockets does
                transport.send(WSMsgType.CLOSE, frame.get_payload_as_bytes())
            transport.disconnect()

    def received(self, seq_digits: bytes) -> None:
        """A whole message came back: its round trip, timed now (a message without a seq is not counted)."""
        now = time.perf_counter()
        if not self.recording:
            return
        try:
            seq = int(seq_digits)
        except ValueError:
            return
        sent = self.sent_at.pop(seq, None)
        if sent is not None:
            rtt = (now - sent) * 1000
            self.rtts.append(rtt)
            if self.steady is not None and seq >= WARMUP_FRAMES:
                self.steady.append(rtt)

    def on_ws_disconnected(self, transport: WSTransport) -> None:  # noqa: ARG002 (picows' signature)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.sending_done.done():  # as websockets' send raising ConnectionClosed mid-session
            self.sending_done.set_exception(ConnectionError("the connection closed before the session's last frame"))
        if not self.disconnected.done():
            self.disconnected.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.timer is None and self.seq < self.n:
            self.timer = self.loop.call_soon(self.send_due)


async def run_session(url: str, seconds: float, rtts: list[float], counts: list[int], start_delay: float,
                      steady: list[float] | None = None) -> None:
    """`relay_latency.one_session` on picows: after `start_delay`, a frame every FRAME_MS for `seconds`, each
    echo's round trip in ms appended to `rtts` (and to `steady` after WARMUP_FRAMES); 0.5 s after the last frame,
    frames sent are added to counts[0] and those still unanswered to counts[1], then a normal close."""
    await asyncio.sleep(start_delay)
    audio = base64.b64encode(os.urandom(FRAME_BYTES))
    n = int(seconds * 1000 / FRAME_MS)
    transport, session = await ws_connect(
        lambda: LoadSession(n, audio, rtts, steady), url, max_frame_size=MAX_MESSAGE_BYTES,
        websocket_handshake_timeout=OPEN_TIMEOUT_S, extra_headers={"User-Agent": USER_AGENT}, enable_auto_ping=True,
        auto_ping_strategy=WSAutoPingStrategy.PING_PERIODICALLY, auto_ping_idle_timeout=PING_S,
        auto_ping_reply_timeout=PING_S)
    assert isinstance(session, LoadSession)
    try:
        session.start()
        await session.sending_done
        await asyncio.sleep(0.5)
        counts[0] += n
        counts[1] += len(session.sent_at)
        session.recording = False
        transport.send_close(WSCloseCode.OK)
        with contextlib.suppress(TimeoutError):  # the server's close reply and its end of the connection
            await asyncio.wait_for(asyncio.shield(session.disconnected), CLOSE_TIMEOUT_S)
    finally:
        session.recording = False
        transport.disconnect()


class Collect(WSListener):
    """selfcheck's client: every frame received, as (opcode, FIN, payload)."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[tuple[WSMsgType, bool, bytes]] = asyncio.Queue()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:  # noqa: ARG002 (picows' signature)
        self.frames.put_nowait((frame.msg_type, frame.fin, frame.get_payload_as_bytes()))

    def on_ws_disconnected(self, transport: WSTransport) -> None:  # noqa: ARG002 (picows' signature)
        self.frames.put_nowait((WSMsgType.CLOSE, True, b"<disconnected>"))


async def selfcheck(port: int | None) -> int:
    """Exit status 0 when every frame came back identical, the ping and close were answered and a 1 s load
    session lost nothing."""
    server = None
    if port is None:
        port = free_port()
        server = await start_echo(port)
    url = f"ws://127.0.0.1:{port}/voice-live/realtime?api-version=2026-07-15&x-standin-mode=echo"
    failures: list[str] = []
    transport, client = await ws_connect(Collect, url, max_frame_size=MAX_MESSAGE_BYTES,
                                         extra_headers={"api-key": "not-checked", "Authorization": "Bearer x"})
    assert isinstance(client, Collect)
    big_text = ("é" * (512 * 1024)).encode()  # 1 MiB of two-byte UTF-8
    cases: list[tuple[str, list[tuple[WSMsgType, bool, bytes]]]] = [
        ("text", [(WSMsgType.TEXT, True, b'{"type":"input_audio_buffer.append","audio":"AAAA"}')]),
        ("binary", [(WSMsgType.BINARY, True, bytes(range(256)) * 4)]),
        ("empty text", [(WSMsgType.TEXT, True, b"")]),
        ("empty binary", [(WSMsgType.BINARY, True, b"")]),
        ("1 MiB binary", [(WSMsgType.BINARY, True, os.urandom(1024 * 1024))]),
        ("1 MiB text", [(WSMsgType.TEXT, True, big_text)]),
        ("fragmented text", [(WSMsgType.TEXT, False, b"frag"), (WSMsgType.CONTINUATION, False, b"men"),
                             (WSMsgType.CONTINUATION, True, b"ted")]),
        ("fragmented 3 MiB binary", [(WSMsgType.BINARY, False, os.urandom(1024 * 1024)),
                                     (WSMsgType.CONTINUATION, False, os.urandom(1024 * 1024)),
                                     (WSMsgType.CONTINUATION, True, os.urandom(1024 * 1024))]),
        ("ping", [(WSMsgType.PING, True, b"are you there")]),
    ]
    for name, frames in cases:
        for msg_type, fin, payload in frames:
            transport.send(msg_type, payload, fin)
        expected = [(WSMsgType.PONG if t is WSMsgType.PING else t, fin, p) for t, fin, p in frames]
        got = [await asyncio.wait_for(client.frames.get(), 5) for _ in expected]
        ok = got == expected
        print(f"{name:>24}: {'ok' if ok else 'DIFFERENT'}")
        if not ok:
            failures.append(name)
    transport.send(WSMsgType.CLOSE, (4001).to_bytes(2, "big") + b"bye")  # a code outside picows' WSCloseCode
    got_close = await asyncio.wait_for(client.frames.get(), 5)
    close_ok = got_close[0] is WSMsgType.CLOSE and got_close[2] == (4001).to_bytes(2, "big") + b"bye"
    await asyncio.wait_for(transport.wait_disconnected(), 5)
    print(f"{'close 4001':>24}: {'ok' if close_ok else 'DIFFERENT'}, then disconnected")
    if not close_ok:
        failures.append("close")
    rtts: list[float] = []
    counts = [0, 0]
    await run_session(url, 1.0, rtts, counts, 0.0)
    load_ok = counts == [50, 0] and len(rtts) == 50
    print(f"{'1 s load session':>24}: {counts[0]} sent, {counts[1]} lost, {len(rtts)} round trips, "
          f"median {sorted(rtts)[len(rtts) // 2] if rtts else float('nan'):.2f} ms")
    if not load_ok:
        failures.append("load session")
    if server is not None:
        server.close()
        await server.wait_closed()
    print("selfcheck:", "ok" if not failures else f"FAILED ({', '.join(failures)})")
    return 1 if failures else 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    echo = commands.add_parser("echo", help="run the echo upstream")
    echo.add_argument("--port", type=int, required=True)
    check = commands.add_parser("selfcheck", help="check an echo upstream's answers byte for byte")
    check.add_argument("--port", type=int, default=None, help="an echo already running (default: start one here)")
    args = parser.parse_args(argv)
    if args.command == "echo":
        uvloop.run(serve_echo(args.port))
        return 0
    return int(uvloop.run(selfcheck(args.port)))


if __name__ == "__main__":
    sys.exit(main())
