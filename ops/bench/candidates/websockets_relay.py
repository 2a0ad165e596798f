"""Candidate relay on `websockets` (pure-Python framing, the asyncio API) for both sides: the plain relay the
issue compares against. One task per direction per session. See `_common.py` for what a candidate does."""

from __future__ import annotations

import asyncio

import uvloop
from _common import MAX_MESSAGE_BYTES, parse_args, sendable_close, upstream_url
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Request, Response, ServerConnection, serve
from websockets.exceptions import ConnectionClosed


async def pump(src: ClientConnection | ServerConnection, dst: ClientConnection | ServerConnection) -> None:
    try:
        async for message in src:
            await dst.send(message)
    except ConnectionClosed:
        pass
    # `src` closed (or failed): pass its code and reason on; a no-op if `dst` is already closed
    await dst.close(sendable_close(src.close_code), src.close_reason or "")


async def main() -> None:
    args = parse_args(__doc__.split("\n")[0])

    def route(connection: ServerConnection, request: Request) -> Response | None:
        if upstream_url(args.upstream, request.path) is None:
            return connection.respond(404, "unknown path\n")
        return None

    async def handler(client: ServerConnection) -> None:
        url = upstream_url(args.upstream, client.request.path)
        assert url is not None
        try:
            upstream = await connect(url, compression=None, max_size=MAX_MESSAGE_BYTES, ping_interval=None)
        except Exception:
            await client.close(1011, "upstream failed")
            return
        async with upstream:
            await asyncio.gather(pump(client, upstream), pump(upstream, client))

    async with serve(handler, "127.0.0.1", args.port, process_request=route, compression=None,
                     max_size=MAX_MESSAGE_BYTES, ping_interval=None, backlog=1024) as server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main())
