"""Candidate relay on picows (Cython WebSocket framing) for both sides, with picows' own transport (aiofastnet)
when it is installed, as picows uses it by default (`--no-aiofastnet`: uvloop's transports). Callbacks only: a
frame is forwarded from `on_ws_frame`, no task per frame or per direction. See `_common.py` for what a candidate
does.

Frames are relayed as frames (a fragmented message stays fragmented, each frame with its FIN bit), so
payloads are byte-identical without joining. Backpressure: when one side's write buffer is full, the other
side's socket stops being read until it drains."""

from __future__ import annotations

import asyncio

import uvloop
from _common import MAX_MESSAGE_BYTES, parse_args, sendable_close, upstream_url
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_connect, ws_create_server

DATA = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION)
USE_AIOFASTNET: bool | None = None  # None: picows' default (aiofastnet when installed); --no-aiofastnet: False


class Side(WSListener):  # type: ignore[misc]
    """One side of a session; `peer` is the other side once both are connected."""

    is_client = False

    def __init__(self) -> None:
        self.transport: WSTransport | None = None
        self.peer: Side | None = None
        self.pending: list[tuple[WSMsgType, bytes, bool]] = []  # frames that arrived before `peer` was set
        self.closed = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:  # noqa: ARG002 (picows' signature)
        msg_type = frame.msg_type
        if msg_type in DATA:
            peer = self.peer
            if peer is not None and peer.transport is not None:
                peer.transport.send(msg_type, frame.get_payload_as_memoryview(), frame.fin)
            else:
                self.pending.append((msg_type, frame.get_payload_as_bytes(), frame.fin))
        elif msg_type is WSMsgType.CLOSE:
            # no status (1005) is mirrored as an empty close frame (picows' NO_INFO), as voicelog does
            code = sendable_close(int(frame.get_close_code())) if frame.payload_size >= 2 else 0
            reason = frame.get_close_message() if frame.payload_size > 2 else None
            self.close_both(code, reason)
        # PING is answered by picows (enable_auto_pong); PONG needs nothing

    def close_both(self, code: int, reason: bytes | None) -> None:
        """Send a close frame with `code` (0: empty) and `reason` to both sides, then drop both connections."""
        for side in (self.peer, self):
            if side is not None and side.transport is not None and not side.closed:
                side.closed = True
                side.transport.send_close(code, reason)
                side.transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:  # noqa: ARG002 (picows' signature)
        if not self.closed:  # vanished without a close frame
            self.close_both(1001 if self.is_client else 1011, None if self.is_client else b"upstream connection lost")

    # backpressure: this side cannot take more, so stop reading the other side's socket
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.underlying_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.underlying_transport.resume_reading()


class ClientSide(Side):
    is_client = True

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.opening: asyncio.Task[None] | None = None  # held: the loop keeps only a weak reference to a task

    def on_ws_connected(self, transport: WSTransport) -> None:
        super().on_ws_connected(transport)
        self.opening = asyncio.get_running_loop().create_task(self.open_upstream())

    async def open_upstream(self) -> None:
        try:
            _, upstream = await ws_connect(Side, self.url, max_frame_size=MAX_MESSAGE_BYTES,
                                           websocket_handshake_timeout=10, use_aiofastnet=USE_AIOFASTNET)
        except Exception:
            self.close_both(1011, b"upstream failed")
            return
        if self.closed:  # the client left while the upstream was being opened
            upstream.transport.send_close(1001, None)
            upstream.transport.disconnect()
            return
        upstream.peer, self.peer = self, upstream
        for src, dst in ((self, upstream), (upstream, self)):  # what either side sent while the upstream opened
            for msg_type, payload, fin in src.pending:
                dst.transport.send(msg_type, payload, fin)
            src.pending.clear()


async def main() -> None:
    args = parse_args(__doc__.split("\n")[0], no_aiofastnet=True)

    def listener_factory(request: WSUpgradeRequest) -> WSListener | None:
        url = upstream_url(args.upstream, request.path.decode())
        return None if url is None else ClientSide(url)  # None: picows answers 404

    global USE_AIOFASTNET
    if args.no_aiofastnet:
        USE_AIOFASTNET = False
    server = await ws_create_server(listener_factory, "127.0.0.1", args.port, max_frame_size=MAX_MESSAGE_BYTES,
                                    backlog=1024, use_aiofastnet=USE_AIOFASTNET)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main())
