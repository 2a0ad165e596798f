"""A loopback TCP proxy in front of Azurite that can swallow responses: requests still reach the service
(and take effect), answers never come back. That is the timeout a retried append must survive."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class StallingProxy:
    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.stall = False

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    @contextlib.asynccontextmanager
    async def stalled(self) -> AsyncIterator[None]:
        """Inside the block, every answer from the service is dropped (requests still get through)."""
        self.stall = True
        try:
            yield
        finally:
            self.stall = False

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            client_writer.close()
            return
        up = asyncio.create_task(self._pump(client_reader, upstream_writer, drop=False))
        down = asyncio.create_task(self._pump(upstream_reader, client_writer, drop=True))
        self._tasks.update((up, down))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
                self._tasks.discard(task)
            for writer in (client_writer, upstream_writer):
                writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, drop: bool) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if drop and self.stall:
                    continue
                writer.write(data)
                await writer.drain()
