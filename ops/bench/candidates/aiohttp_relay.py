"""Candidate relay on aiohttp for both sides: its server's `WebSocketResponse` and its client's `ws_connect`, whose
frame reader and masking are compiled (C/Cython). Text is neither decoded nor re-encoded (`decode_text=False`,
then sent as a TEXT frame as received). One task per direction per session. See `_common.py`."""

from __future__ import annotations

import asyncio

import aiohttp
import uvloop
from _common import MAX_MESSAGE_BYTES, parse_args, sendable_close, upstream_url
from aiohttp import WSMsgType, web

WS = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def pump(src: WS, dst: WS) -> None:
    """Relay `src`'s messages to `dst` until `src` closes, then close `dst` with the same code and reason."""
    while True:  # not `async for`: it ends at a CLOSE without showing it; autoclose=False: CLOSE arrives here
        msg = await src.receive()
        if msg.type is WSMsgType.BINARY:
            await dst.send_frame(msg.data, WSMsgType.BINARY)
        elif msg.type is WSMsgType.TEXT:
            await dst.send_frame(msg.data, WSMsgType.TEXT)  # bytes: decode_text=False
        elif msg.type is WSMsgType.CLOSE:  # `src` closed: pass its code and reason on, then answer it
            code, reason = sendable_close(msg.data), (msg.extra or "").encode()
            if not dst.closed:
                await dst.close(code=code, message=reason)
            if not src.closed:
                await src.close(code=code, message=reason)
            return
        elif msg.type is WSMsgType.ERROR or (msg.type is WSMsgType.CLOSED and src.close_code == 1006):
            # `src` failed or vanished without a close frame: an upstream as 1011, a client as 1001
            if not dst.closed:
                upstream_lost = isinstance(src, aiohttp.ClientWebSocketResponse)
                await dst.close(code=1011 if upstream_lost else 1001,
                                message=b"upstream connection lost" if upstream_lost else b"")
            return
        else:  # CLOSING, or CLOSED by us: the other direction is closing this side (above); nothing to relay
            return


def make_app(upstream: str, session: list[aiohttp.ClientSession]) -> web.Application:
    async def relay(request: web.Request) -> web.StreamResponse:
        url = upstream_url(upstream, request.path_qs)
        if url is None:
            raise web.HTTPNotFound()
        client = web.WebSocketResponse(autoclose=False, autoping=True, compress=False, max_msg_size=MAX_MESSAGE_BYTES,
                                       decode_text=False)
        try:
            up = await session[0].ws_connect(url, autoclose=False, autoping=True, compress=0,
                                             max_msg_size=MAX_MESSAGE_BYTES, decode_text=False)
        except aiohttp.ClientError:
            raise web.HTTPBadGateway() from None
        await client.prepare(request)
        await asyncio.gather(pump(client, up), pump(up, client))
        return client

    app = web.Application()
    app.router.add_get("/{tail:.*}", relay)
    return app


async def main() -> None:
    args = parse_args(__doc__.split("\n")[0])
    session = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))]
    runner = web.AppRunner(make_app(args.upstream, session), access_log=None, handle_signals=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await session[0].close()


if __name__ == "__main__":
    uvloop.run(main())
