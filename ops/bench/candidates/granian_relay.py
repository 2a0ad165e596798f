"""Candidate relay on granian's RSGI interface (its HTTP server and WebSocket framing are Rust, hyper and
tungstenite) for the client side, and aiohttp's client (compiled frame reader) for the upstream side, since
granian has no WebSocket client. One task per direction per session. See `_common.py`.

Run as a script it replaces itself (exec, same pid) with `python -m granian` serving `granian_relay:app` with one
worker process on uvloop; the upstream reaches the app in `RELAY_UPSTREAM`. Limits met here (granian 2.8, RSGI)
that a real relay would have to get around: the client's close code and reason are not exposed to the app (the
upstream is closed with 1000); `close(code)` after the handshake reached a test client as 1005 (no status), so
the upstream's close code does not get through either; an empty binary message from the client was not relayed;
text from the client arrives decoded as `str`. None of this matters for the benchmark's load."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
from _common import MAX_MESSAGE_BYTES, parse_args, sendable_close, upstream_url
from aiohttp import WSMsgType

_session: aiohttp.ClientSession | None = None


async def client_to_upstream(transport: Any, up: aiohttp.ClientWebSocketResponse) -> None:
    while True:
        try:
            msg = await transport.receive()
        except Exception:  # RSGIProtocolClosed: the client vanished
            break
        kind = int(msg.kind)
        if kind == 1:
            await up.send_frame(msg.data, WSMsgType.BINARY)
        elif kind == 2:
            await up.send_str(msg.data)
        else:  # 0: close
            break
    if not up.closed:
        await up.close(code=1000)


async def upstream_to_client(transport: Any, up: aiohttp.ClientWebSocketResponse) -> int | None:
    """Relays until the upstream closes; returns the code to close the client with, None if the client closed."""
    while True:  # not `async for`: it ends at a CLOSE without showing it
        msg = await up.receive()
        if msg.type is WSMsgType.TEXT:
            await transport.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await transport.send_bytes(msg.data)
        elif msg.type is WSMsgType.CLOSE:
            return sendable_close(msg.data)
        else:  # CLOSING: the client closed (above); ERROR or CLOSED: the upstream failed or vanished
            break
    return None if msg.type is WSMsgType.CLOSING else 1011


async def app(scope: Any, protocol: Any) -> None:
    global _session
    if scope.proto != "ws":
        protocol.response_str(404, [("content-type", "text/plain")], "unknown path\n")
        return
    url = upstream_url(os.environ["RELAY_UPSTREAM"],
                       scope.path + (f"?{scope.query_string}" if scope.query_string else ""))
    if url is None:
        protocol.close(404)
        return
    if _session is None:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        up = await _session.ws_connect(url, autoclose=False, compress=0, max_msg_size=MAX_MESSAGE_BYTES)
    except aiohttp.ClientError:
        protocol.close(502)
        return
    transport = await protocol.accept()
    # the client's close ends `client_to_upstream`, which closes the upstream, which ends `upstream_to_client`;
    # the upstream's close ends `upstream_to_client`, then the client is closed and its reader cancelled
    reading = asyncio.create_task(client_to_upstream(transport, up))
    code = await upstream_to_client(transport, up)
    if code is None:  # the client closed: let `client_to_upstream` finish closing the upstream
        await reading
        code = 1000
    else:
        reading.cancel()
    protocol.close(code)


if __name__ == "__main__":
    args = parse_args(__doc__.split("\n")[0])
    os.environ["RELAY_UPSTREAM"] = args.upstream
    here = Path(__file__).resolve().parent
    os.execv(sys.executable, [sys.executable, "-m", "granian",  # noqa: S606 (no shell: a fixed argv) "--interface", "rsgi", "--host", "127.0.0.1",
                              "--port", str(args.port), "--workers", "1", "--loop", "uvloop", "--no-log",
                              "--no-access-log", "--backlog", "1024", "--working-dir", str(here),
                              "granian_relay:app"])
