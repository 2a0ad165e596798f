"""The HTTP server bounds what a client costs (issue 15, finding 7): head and body sizes, head and body
timeouts, connections per address; a relayed call is never cut or counted by any of it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from azure.ai.voicelive.aio import connect as sdk_connect
from azure.core.credentials import AzureKeyCredential
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app.server.http_protocol import ConnectionGuard
from app.server.settings import ServerSettings
from tests.fixtures.relay import LOADED_MACHINE_ENV, STANDIN_API_KEY, RelayHandle, StandinHandle, relay_for
from tests.relay.audio import frames, speech_like

HEAD_TIMEOUT_S = 0.5
MIB = 1024 * 1024
ECHO = "/resources/acme/voice-live/realtime?x-standin-mode=echo"
AUTH = {"api-key": STANDIN_API_KEY}
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`voicelog serve` itself, with the head limits and timeout set through its environment."""
    data = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {**os.environ, "VOICELOG_DATA_DIR": str(data / "data"), "VOICELOG_STANDIN_PORT": str(free_port()),
           "VOICELOG_SERVER__HEADER_TIMEOUT_S": str(HEAD_TIMEOUT_S),
           "VOICELOG_SERVER__MAX_HEADER_BYTES": str(32 * 1024),
           "VOICELOG_SERVER__MAX_REQUEST_LINE_BYTES": "4096", **LOADED_MACHINE_ENV}
    env.pop("VOICELOG_DATABASE_URL", None)
    log = data / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli_main", "serve", "--port", str(port)],
                                env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        with httpx.Client() as client:
            for _ in range(1200):  # 60 s for a cold start on a loaded machine
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"http://{LOOPBACK}:{port}/readyz").status_code == 200:
                        break
                if proc.poll() is not None:
                    raise RuntimeError(f"voicelog serve exited:\n{log.read_text(errors='replace')[-4000:]}")
                time.sleep(0.05)
            else:
                raise RuntimeError(f"voicelog serve not ready:\n{log.read_text(errors='replace')[-4000:]}")
        yield proc, port
    finally:
        proc.kill()
        proc.wait(10)


# --- raw HTTP on asyncio streams -------------------------------------------------------------------------


async def open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(LOOPBACK, port)


async def read_status(reader: asyncio.StreamReader) -> int:
    """Read one response (head and a Content-Length body); returns its status."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            await asyncio.wait_for(reader.readexactly(int(value)), 30)
    return int(head.split(b" ", 2)[1])


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """True once the server has closed the connection (EOF or reset), False if it is still open after `within`."""
    try:
        while await asyncio.wait_for(reader.read(65536), within):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def get(port: int, head: bytes = b"") -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await open_raw(port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + head + b"\r\n")
    status = await read_status(reader)
    return status, reader, writer


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def guard_of(relay: RelayHandle) -> ConnectionGuard:
    guard = getattr(relay.server.config.http_protocol_class, "guard", None)
    assert isinstance(guard, ConnectionGuard)
    return guard


@contextlib.asynccontextmanager
async def limited_relay(tmp_path: Path, standin: StandinHandle, **limits: object) -> AsyncIterator[RelayHandle]:
    async with relay_for(tmp_path, standin, server=ServerSettings(**limits)) as relay:
        yield relay


# --- head sizes --------------------------------------------------------------------------------------------


async def huge_head(port: int, total: int) -> tuple[int, int]:
    """Send up to `total` bytes of one header value while reading; returns (status, bytes sent by then)."""
    reader, writer = await open_raw(port)
    sent = 0

    async def pump() -> None:
        nonlocal sent
        chunk = b"a" * 65536
        with contextlib.suppress(ConnectionError):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: ")
            while sent < total:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
            writer.write(b"\r\n\r\n")
            await writer.drain()

    pumping = asyncio.create_task(pump())
    try:
        status = await read_status(reader)
        at_answer = sent
    finally:
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumping
        writer.close()
    return status, at_answer


async def test_32_mib_of_headers_on_four_connections_is_refused_with_431_without_growing_memory(
    served: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = served
    server = psutil.Process(proc.pid)
    before = server.memory_info().rss
    answers = await asyncio.gather(*(huge_head(port, 32 * MIB) for _ in range(4)))
    grown = server.memory_info().rss - before
    assert [status for status, _ in answers] == [431] * 4
    assert all(sent < 32 * MIB for _, sent in answers), "refused only after the client sent everything"
    assert grown < 8 * MIB, f"RSS grew by {grown / MIB:.1f} MiB"


async def test_an_over_long_request_line_is_refused_with_414_and_closed(
    served: tuple[subprocess.Popen[bytes], int],
) -> None:
    _, port = served
    reader, writer = await open_raw(port)
    writer.write(b"GET /healthz?" + b"q" * 8192 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert await read_status(reader) == 414
    assert await closed_by_server(reader, 10)
    writer.close()


async def test_too_many_header_fields_are_refused_with_431(tmp_path: Path, standin: StandinHandle) -> None:
    async with limited_relay(tmp_path, standin, max_header_count=20) as relay:
        fields = b"".join(b"X-Field-%d: 1\r\n" % i for i in range(30))
        status, reader, writer = await get(relay.port, fields)
        assert status == 431
        assert await closed_by_server(reader, 10)
        writer.close()
        status, _, writer = await get(relay.port, b"".join(b"X-Field-%d: 1\r\n" % i for i in range(10)))
        assert status == 200
        writer.close()


async def test_a_websocket_handshake_gets_the_same_head_limits(tmp_path: Path, standin: StandinHandle) -> None:
    async with limited_relay(tmp_path, standin, max_header_bytes=8192) as relay:
        # Lines under websockets' own 8 KiB line limit: only the head's total is too much.
        fillers = {f"X-Filler-{i}": "a" * 4000 for i in range(4)}
        with pytest.raises(InvalidStatus) as refused:
            async with connect(relay.ws + ECHO, additional_headers={**AUTH, **fillers}):
                pass
        assert refused.value.response.status_code == 431
        async with connect(relay.ws + ECHO, additional_headers=AUTH) as call:
            await call.send("fits")
            assert await call.recv() == "fits"


# --- timeouts ----------------------------------------------------------------------------------------------


async def test_an_idle_connection_that_sends_nothing_is_closed(
    served: tuple[subprocess.Popen[bytes], int],
) -> None:
    _, port = served
    reader, writer = await open_raw(port)
    assert await closed_by_server(reader, 10)
    writer.close()


async def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout(
    tmp_path: Path, standin: StandinHandle,
) -> None:
    """Between requests only `keep_alive_timeout_s` (here 1 s) holds a connection open: the default 75 s would
    not close it within the 10 s waited here, and the header timeout (30 s here) is not what closes it."""
    async with limited_relay(tmp_path, standin, header_timeout_s=30, keep_alive_timeout_s=1) as relay:
        assert relay.server.config.timeout_keep_alive == 1
        reader, writer = await open_raw(relay.port)
        for _ in range(2):  # kept alive: a second request on the same connection is answered
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert await read_status(reader) == 200
        assert await closed_by_server(reader, 10)  # then idle: closed by the server, not by us
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def trickle(writer: asyncio.StreamWriter, head: bytes, every_s: float) -> int:
    """Send `head` one byte at a time; returns how many bytes went out before the server closed."""
    sent = 0
    with contextlib.suppress(ConnectionError):
        for byte in head:
            writer.write(bytes([byte]))
            await writer.drain()
            sent += 1
            await asyncio.sleep(every_s)
    return sent


async def test_a_trickling_head_is_closed_after_the_header_timeout_on_every_request_of_a_connection(
    tmp_path: Path, standin: StandinHandle,
) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"
    async with limited_relay(tmp_path, standin, header_timeout_s=HEAD_TIMEOUT_S, keep_alive_timeout_s=30) as relay:
        for requests_before in (0, 1):  # the first request, and a later one on a kept-alive connection
            reader, writer = await open_raw(relay.port)
            if requests_before:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert await read_status(reader) == 200
                await asyncio.sleep(HEAD_TIMEOUT_S * 2)  # idle between requests is the keep-alive's business
            trickling = asyncio.create_task(trickle(writer, head, 0.05))
            assert await closed_by_server(reader, 10)
            sent = await asyncio.wait_for(trickling, 15)
            assert sent < len(head), "the whole head got through"
            writer.close()


async def drip(writer: asyncio.StreamWriter, every_s: float, count: int) -> None:
    """Send one byte every `every_s`, `count` times, or until the server closes."""
    with contextlib.suppress(ConnectionError):
        for _ in range(count):
            writer.write(b"a")
            await writer.drain()
            await asyncio.sleep(every_s)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def post_head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


BODY_TIMEOUTS = {"header_timeout_s": HEAD_TIMEOUT_S, "body_idle_timeout_s": 0.5, "body_timeout_s": 1.5,
                 "keep_alive_timeout_s": 30}


async def test_a_trickled_request_body_is_answered_408_and_closed_at_the_body_timeout(
    tmp_path: Path, standin: StandinHandle,
) -> None:
    """Unauthenticated, Content-Length 100000, 4 B/s: each byte comes well within the idle gap, so only the
    overall body timeout ends it; the connection's per-address slot is freed. A body sent in pieces within the
    timeouts reaches the app."""
    async with limited_relay(tmp_path, standin, **BODY_TIMEOUTS) as relay:
        guard = guard_of(relay)
        body = b'{"title": "' + b"t" * 600 + b'"}'
        reader, writer = await open_raw(relay.port)
        writer.write(post_head("/tickets", len(body)))
        for start in range(0, len(body), 200):
            await asyncio.sleep(0.1)
            writer.write(body[start:start + 200])
        assert await read_status(reader) == 401  # the app's own answer: no ticketing credentials
        writer.close()

        reader, writer = await open_raw(relay.port)
        writer.write(post_head("/tickets", 100_000))
        dripping = asyncio.create_task(drip(writer, 0.25, 400))
        try:
            assert await read_status(reader) == 408
            assert await closed_by_server(reader, 10)
            await until(lambda: guard.held(LOOPBACK) == 0)
        finally:
            await stop(dripping)
            writer.close()


async def test_a_request_whose_body_never_comes_is_answered_408_and_its_slot_freed(
    tmp_path: Path, standin: StandinHandle,
) -> None:
    async with limited_relay(tmp_path, standin, **BODY_TIMEOUTS) as relay:
        guard = guard_of(relay)
        reader, writer = await open_raw(relay.port)
        writer.write(post_head("/admin/staff", 10))
        await until(lambda: guard.held(LOOPBACK) == 1)
        assert await read_status(reader) == 408
        assert await closed_by_server(reader, 10)
        await until(lambda: guard.held(LOOPBACK) == 0)
        writer.close()


async def test_a_body_still_trickling_after_the_answer_is_closed(tmp_path: Path, standin: StandinHandle) -> None:
    """The app answered without reading the body; the client keeps the body coming, which also holds off the
    keep-alive timeout. The body timeout closes it (no 408: the answer is already out)."""
    async with limited_relay(tmp_path, standin, **BODY_TIMEOUTS) as relay:
        guard = guard_of(relay)
        reader, writer = await open_raw(relay.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n")
        assert await read_status(reader) == 200
        dripping = asyncio.create_task(drip(writer, 0.25, 400))
        try:
            assert await closed_by_server(reader, 10)
            await until(lambda: guard.held(LOOPBACK) == 0)
        finally:
            await stop(dripping)
            writer.close()


async def answer_to(port: int, head: bytes, body: bytes = b"") -> int:
    """The status of one request; a 413 must also close the connection."""
    reader, writer = await open_raw(port)
    writer.write(head + body)
    status = await read_status(reader)
    if status == 413:
        assert await closed_by_server(reader, 10)
    writer.close()
    return status


async def test_a_body_over_max_body_bytes_is_refused_with_413_and_a_report_may_be_larger(
    tmp_path: Path, standin: StandinHandle,
) -> None:
    async with limited_relay(tmp_path, standin, max_body_bytes=4096, max_report_body_bytes=65536) as relay:
        # Declared too large: refused from the head, before any body is sent.
        assert await answer_to(relay.port, post_head("/tickets", 4097)) == 413
        # Chunked, no length declared: refused once the body passes the bound.
        chunk = b"%x\r\n%s\r\n" % (1024, b"a" * 1024)
        chunked = (b"POST /tickets HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n")
        assert await answer_to(relay.port, chunked, chunk * 5) == 413
        # Within the bound: the app answers (no ticketing credentials).
        assert await answer_to(relay.port, post_head("/tickets", 2), b"{}") == 401
        # A signed report may be larger than any other body, up to its own bound.
        report = b'{"report": "' + b"r" * 8000 + b'"}'
        status = await answer_to(relay.port, post_head("/audit/reports/verify", len(report)), report)
        assert status in (401, 403)
        assert await answer_to(relay.port, post_head("/audit/reports/verify", 65537)) == 413
        assert await answer_to(relay.port, post_head("/audit/reports/verify?x=1", 65537)) == 413
        assert await answer_to(relay.port, post_head("/audit/reports/verify/x", 8000)) == 413


def test_body_bounds_and_timeouts_are_settable_and_checked() -> None:
    defaults = ServerSettings()
    assert (defaults.max_body_bytes, defaults.max_report_body_bytes) == (MIB, 64 * MIB)
    assert (defaults.body_idle_timeout_s, defaults.body_timeout_s) == (15.0, 120.0)
    with pytest.raises(ValueError, match="max_report_body_bytes"):
        ServerSettings(max_body_bytes=2 * MIB, max_report_body_bytes=MIB)
    with pytest.raises(ValueError, match="body_timeout_s"):
        ServerSettings(body_idle_timeout_s=30, body_timeout_s=10)


# --- connections per address -------------------------------------------------------------------------------


async def sdk_session(relay: RelayHandle) -> list[str]:
    seen: list[str] = []
    async with sdk_connect(endpoint=relay.endpoint("acme"), credential=AzureKeyCredential(STANDIN_API_KEY),
                           model="gpt-4o") as conn:
        for chunk in frames(speech_like(1.5)):
            await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        async for event in conn:
            seen.append(event.type)
            if event.type == "response.done":
                break
    return seen


async def test_past_the_per_address_bound_http_gets_503_while_calls_go_on_and_new_calls_are_taken(
    tmp_path: Path, standin: StandinHandle,
) -> None:
    async with limited_relay(tmp_path, standin, max_http_connections_per_address=3,
                             max_open_connections_per_address=6, keep_alive_timeout_s=30) as relay:
        guard = guard_of(relay)
        async with connect(relay.ws + ECHO, additional_headers=AUTH) as call:
            await call.send("hello")
            assert await call.recv() == "hello"
            await until(lambda: guard.held(LOOPBACK) == 0)  # an established call is not counted
            held = []
            for _ in range(3):
                status, _reader, writer = await get(relay.port)
                assert status == 200
                held.append(writer)
            status, reader, writer = await get(relay.port)
            assert status == 503
            assert await closed_by_server(reader, 10)
            writer.close()
            await call.send("still talking")  # the live call is untouched
            assert await call.recv() == "still talking"
            seen = await asyncio.wait_for(sdk_session(relay), 60)  # a new call from the same address is taken
            assert "response.done" in seen
            held.pop().close()
            await until(lambda: guard.held(LOOPBACK) == 2)
            status, _, writer = await get(relay.port)  # and HTTP again once a connection is free
            assert status == 200
            writer.close()
            for writer in held:
                writer.close()
        await until(lambda: guard.held(LOOPBACK) == 0)


async def test_a_connection_past_the_open_bound_is_closed_at_once_and_calls_do_not_count(
    tmp_path: Path, standin: StandinHandle,
) -> None:
    async with limited_relay(tmp_path, standin, max_http_connections_per_address=2,
                             max_open_connections_per_address=3, header_timeout_s=30) as relay:
        guard = guard_of(relay)
        calls = [await connect(relay.ws + ECHO, additional_headers=AUTH).__aenter__() for _ in range(4)]
        try:
            await until(lambda: guard.held(LOOPBACK) == 0)
            idle = [await open_raw(relay.port) for _ in range(3)]
            await until(lambda: guard.held(LOOPBACK) == 3)
            reader, writer = await open_raw(relay.port)
            assert await closed_by_server(reader, 10), "held until the 30 s header timeout, not refused"
            writer.close()
            for call in calls:
                await call.send("on")
                assert await call.recv() == "on"
            for _, idle_writer in idle:
                idle_writer.close()
            await until(lambda: guard.held(LOOPBACK) == 0)
        finally:
            for call in calls:
                await call.close()


def test_only_the_listed_proxies_are_exempt_from_the_per_address_bounds() -> None:
    guard = ConnectionGuard(ServerSettings(connection_limit_exempt=["10.244.0.0/16", "::1/128"]))
    assert guard.is_exempt("10.244.3.7")
    assert guard.is_exempt("::ffff:10.244.3.7")  # an IPv4 proxy seen by a dual-stack listener
    assert guard.is_exempt("::1")
    assert not guard.is_exempt("10.245.0.1")
    assert not guard.is_exempt("127.0.0.1")
    assert not ConnectionGuard(ServerSettings()).is_exempt("127.0.0.1")  # nobody by default
    with pytest.raises(ValueError, match="every address"):
        ServerSettings(connection_limit_exempt=["0.0.0.0/0"])
