"""The direct data plane's own promises (and the ASGI one kept for comparison), and admission control.

The rest of tests/relay and tests/contract run on the default (direct) data plane; these add what only it
does (raw frames, fragments, protocol errors, its handshake checks) and what admission promises.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.relay.tap import Direction, FrameTap, SessionInfo
from tests.fixtures.relay import STANDIN_API_KEY, StandinHandle, relay_for

AUTH = {"api-key": STANDIN_API_KEY}
ECHO = "/resources/acme/voice-live/realtime?x-standin-mode=echo"


@pytest.mark.parametrize("plane", ["direct", "asgi"])
async def test_both_data_planes_relay_frames_and_closes_alike(
    tmp_path: Path, standin: StandinHandle, plane: str
) -> None:
    sent: list[str | bytes] = [json.dumps({"type": "x", "n": i, "s": "é" * i}) for i in range(20)]
    sent += [os.urandom(70_000), b"", ""]
    async with relay_for(tmp_path, standin, relay_data_plane=plane) as relay, \
            connect(relay.ws + ECHO, additional_headers=AUTH) as ws:
        for message in sent:
            await ws.send(message)
        received = [await ws.recv() for _ in sent]
        await ws.close(4001, "done here")
    assert received == sent
    (seen,) = standin.standin.sessions.values()
    assert seen.frames == sent
    assert seen.close_code == 4001


async def test_a_fragmented_message_is_relayed_whole(tmp_path: Path, standin: StandinHandle) -> None:
    async with relay_for(tmp_path, standin) as relay, connect(relay.ws + ECHO, additional_headers=AUTH) as ws:
        await ws.send(["first ", "second ", "third"])
        await ws.send([b"\x00\x01", b"\x02"])
        assert await ws.recv() == "first second third"
        assert await ws.recv() == b"\x00\x01\x02"
    (seen,) = standin.standin.sessions.values()
    assert seen.frames == ["first second third", b"\x00\x01\x02"]


# --- raw frames: what a well-behaved client library would never send -------------------------------------


async def _raw_handshake(port: int, *, version: str | None = "13") -> tuple[asyncio.StreamReader,
                                                                            asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {ECHO} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}", f"api-key: {STANDIN_API_KEY}"]
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer, head


def _client_frame(opcode: int, payload: bytes, *, masked: bool = True) -> bytes:
    assert len(payload) < 126
    if not masked:
        return bytes((0x80 | opcode, len(payload))) + payload
    key = os.urandom(4)
    return bytes((0x80 | opcode, 0x80 | len(payload))) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def _close_frame(reader: asyncio.StreamReader) -> tuple[int, str]:
    """Read server frames until the close frame; returns its code and reason."""
    while True:
        first, second = await asyncio.wait_for(reader.readexactly(2), 5)
        payload = await reader.readexactly(second & 0x7F)
        if first & 0x0F == 0x8:
            return struct.unpack("!H", payload[:2])[0], payload[2:].decode()


@pytest.mark.parametrize(("frame", "code"), [
    # Unrecorded, text is not decoded here: the upstream refuses it with 1007 and that close is passed on.
    pytest.param(_client_frame(0x1, b"\xff\xfe not utf-8"), 1007, id="invalid-utf8-text"),
    pytest.param(_client_frame(0x1, b"unmasked", masked=False), 1002, id="unmasked-client-frame"),
    pytest.param(bytes((0xC1, 0x80)) + os.urandom(4), 1002, id="reserved-bit"),
    pytest.param(_client_frame(0x3, b"x"), 1002, id="unknown-opcode"),
])
async def test_a_client_breaking_the_protocol_is_closed_and_nothing_is_relayed(
    tmp_path: Path, standin: StandinHandle, frame: bytes, code: int
) -> None:
    async with relay_for(tmp_path, standin) as relay:
        reader, writer, head = await _raw_handshake(relay.port)
        assert head.startswith(b"HTTP/1.1 101 ")
        writer.write(frame)
        assert (await _close_frame(reader))[0] == code
        writer.close()
        deadline = time.monotonic() + 5
        while not standin.standin.sessions or next(iter(standin.standin.sessions.values())).close_code is None:
            assert time.monotonic() < deadline, "the upstream was never told"
            await asyncio.sleep(0.02)
    (seen,) = standin.standin.sessions.values()
    assert seen.frames == []
    if code != 1007:
        assert seen.close_code == code  # the relay told the upstream why


async def test_a_handshake_without_version_13_is_refused_with_400(tmp_path: Path, standin: StandinHandle) -> None:
    async with relay_for(tmp_path, standin) as relay:
        reader, writer, head = await _raw_handshake(relay.port, version=None)
        body = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(body)["code"] == "bad_handshake"
    assert not standin.standin.sessions  # refused before the upstream was dialled


# --- admission -------------------------------------------------------------------------------------------


async def test_past_the_session_limit_calls_get_503_relay_busy_and_admitted_calls_keep_going(
    tmp_path: Path, standin: StandinHandle
) -> None:
    async with relay_for(tmp_path, standin, relay_max_sessions=2) as relay, \
            connect(relay.ws + ECHO, additional_headers=AUTH) as first, \
            connect(relay.ws + ECHO, additional_headers=AUTH) as second:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(relay.ws + ECHO, additional_headers=AUTH):
                pass
        response = refused.value.response
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert json.loads(response.body)["code"] == "relay_busy"
        for ws in (first, second):  # admitted calls are never refused later
            await ws.send("still here")
            assert await ws.recv() == "still here"
        await first.close()
        deadline = time.monotonic() + 5
        while True:  # the freed place is taken by the next call
            try:
                async with connect(relay.ws + ECHO, additional_headers=AUTH) as third:
                    await third.send("in")
                    assert await third.recv() == "in"
                    break
            except InvalidStatus:
                assert time.monotonic() < deadline, "the freed place was never given back"
                await asyncio.sleep(0.05)
        await second.send("after")
        assert await second.recv() == "after"
    assert len(standin.standin.sessions) == 3  # the refused call never reached the upstream


async def test_while_the_event_loop_runs_late_new_calls_are_refused(tmp_path: Path, standin: StandinHandle) -> None:
    async with relay_for(tmp_path, standin, relay_busy_loop_lag_s=0.1) as relay, \
            connect(relay.ws + ECHO, additional_headers=AUTH) as live:
        deadline = time.monotonic() + 5
        while relay.app.state.ctx.relay.loop_lag.recent_lag_s() < 0.1:  # late sample after sample
            assert time.monotonic() < deadline, "the monitor never saw the late loop"
            time.sleep(0.2)  # the relay shares this event loop: block it as sustained load would
            await asyncio.sleep(0)
        with pytest.raises(InvalidStatus) as refused:
            async with connect(relay.ws + ECHO, additional_headers=AUTH):
                pass
        assert refused.value.response.status_code == 503
        assert json.loads(refused.value.response.body)["code"] == "relay_busy"
        await live.send("unharmed")
        assert await live.recv() == "unharmed"
        await asyncio.sleep(1.5)  # the late samples leave the one-second window
        async with connect(relay.ws + ECHO, additional_headers=AUTH) as later:
            await later.send("in")
            assert await later.recv() == "in"


async def test_a_stalled_client_is_refused_on_the_asgi_plane_too(tmp_path: Path, standin: StandinHandle) -> None:
    """Admission is the relay's, not the data plane's."""
    async with relay_for(tmp_path, standin, relay_max_sessions=1, relay_data_plane="asgi") as relay, \
            connect(relay.ws + ECHO, additional_headers=AUTH):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(relay.ws + ECHO, additional_headers=AUTH):
                pass
    assert refused.value.response.status_code == 503
    assert refused.value.response.headers["retry-after"] == "1"


async def test_a_message_over_the_cap_in_fragments_closes_with_1009_and_is_not_relayed(
    tmp_path: Path, standin: StandinHandle
) -> None:
    async with relay_for(tmp_path, standin, relay_max_message_bytes=64 * 1024) as relay, \
            connect(relay.ws + ECHO, additional_headers=AUTH) as ws:
        await ws.send([b"\0" * 40_000, b"\0" * 40_000])
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009
    (seen,) = standin.standin.sessions.values()
    assert seen.frames == []


class _ListTap:
    def __init__(self) -> None:
        self.frames: list[str | bytes] = []

    def on_frame(self, direction: Direction, offset_ns: int, payload: bytes, text: bool) -> None:
        self.frames.append(payload.decode() if text else payload)  # text as the session sent it

    def on_close(self, client_code: int | None, upstream_code: int | None, reason: str) -> None:
        pass


class _TapFactory:
    def __init__(self) -> None:
        self.tap = _ListTap()

    async def open(self, info: SessionInfo) -> FrameTap | None:
        return self.tap


async def test_a_recorded_session_refuses_invalid_utf8_itself_and_records_nothing_of_it(
    tmp_path: Path, standin: StandinHandle
) -> None:
    taps = _TapFactory()
    async with relay_for(tmp_path, standin, tap_factory=taps) as relay:
        reader, writer, head = await _raw_handshake(relay.port)
        assert head.startswith(b"HTTP/1.1 101 ")
        writer.write(_client_frame(0x1, "good é".encode()) + _client_frame(0x1, b"\xc3\x28 bad"))
        assert (await _close_frame(reader))[0] == 1007
        writer.close()
        deadline = time.monotonic() + 5
        while not standin.standin.sessions or next(iter(standin.standin.sessions.values())).close_code is None:
            assert time.monotonic() < deadline, "the upstream was never told"
            await asyncio.sleep(0.02)
    (seen,) = standin.standin.sessions.values()
    assert seen.frames == ["good é"]
    assert seen.close_code == 1007
    assert taps.tap.frames == ["good é"]
