"""Frames pass both ways byte-identical and in order; close codes and request ids propagate."""

from __future__ import annotations

import asyncio
import json
import os
import re
from datetime import UTC, datetime

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.fixtures.relay import STANDIN_API_KEY, RelayHandle, StandinHandle

AUTH = {"api-key": STANDIN_API_KEY}
ECHO_URL = "{}/resources/acme/voice-live/realtime?x-standin-mode=echo"


async def test_echo_frames_are_byte_identical_and_in_order_both_ways(
    relay: RelayHandle, standin: StandinHandle
) -> None:
    sent: list[str | bytes] = []
    for i in range(200):
        sent.append(json.dumps({"type": "x.test", "seq": i, "pad": "é" * (i % 7)}))
        sent.append(os.urandom(1 + (i * 37) % 5000))
    sent.append(os.urandom(4 * 1024 * 1024 - 64))  # near the 4 MiB message limit
    async with connect(ECHO_URL.format(relay.ws), additional_headers=AUTH,
                       max_size=8 * 1024 * 1024) as ws:
        async def writer() -> None:
            for message in sent:
                await ws.send(message)

        writing = asyncio.create_task(writer())
        received = [await ws.recv() for _ in sent]
        await writing
    assert received == sent
    (seen,) = standin.standin.sessions.values()
    assert seen.frames == sent
    assert [type(m) for m in received] == [type(m) for m in sent]


async def test_request_id_is_returned_to_the_client_and_sent_upstream(
    relay: RelayHandle, standin: StandinHandle
) -> None:
    headers = {**AUTH, "x-ms-client-request-id": "client-corr-42"}
    async with connect(f"{relay.ws}/resources/acme/voice-live/realtime?api-version=2026-07-15",
                       additional_headers=headers) as ws:
        assert ws.response is not None
        request_id = ws.response.headers["x-ms-request-id"]
        assert ws.response.headers["x-request-id"] == request_id
        created = json.loads(await ws.recv())
        assert created["type"] == "session.created"
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)  # 128 random bits, hex
    assert request_id != "client-corr-42"
    assert request_id in standin.standin.sessions  # upstream saw ours as x-ms-client-request-id


async def test_each_session_gets_a_fresh_request_id(relay: RelayHandle) -> None:
    ids = set()
    for _ in range(5):
        async with connect(ECHO_URL.format(relay.ws), additional_headers=AUTH) as ws:
            assert ws.response is not None
            ids.add(ws.response.headers["x-ms-request-id"])
    assert len(ids) == 5


async def test_client_close_code_and_reason_reach_the_upstream(relay: RelayHandle, standin: StandinHandle) -> None:
    async with connect(ECHO_URL.format(relay.ws), additional_headers=AUTH) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.close(4001, "caller hung up")
    for _ in range(100):
        (seen,) = standin.standin.sessions.values()
        if seen.close_code is not None:
            break
        await asyncio.sleep(0.02)
    assert seen.close_code == 4001


async def test_upstream_close_code_and_reason_reach_the_client(relay: RelayHandle) -> None:
    async with connect(f"{relay.ws}/resources/acme/voice-live/realtime", additional_headers=AUTH) as ws:
        await ws.recv()  # session.created
        await ws.send(json.dumps({"type": "x-standin.close", "code": 4002, "reason": "session expired"}))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4002
    assert closed.value.rcvd.reason == "session expired"


async def test_unknown_resource_is_refused_in_the_handshake_with_404(relay: RelayHandle) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{relay.ws}/resources/nope/voice-live/realtime", additional_headers=AUTH):
            pass
    assert refused.value.response.status_code == 404
    body = json.loads(refused.value.response.body or b"{}")
    assert body["code"] == "resource_not_found"


async def test_upstream_down_gives_a_clean_502_with_a_request_id(relay: RelayHandle) -> None:
    await relay.add_resource("gone", "ws://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{relay.ws}/resources/gone/voice-live/realtime", additional_headers=AUTH):
            pass
    assert refused.value.response.status_code == 502
    assert json.loads(refused.value.response.body or b"{}")["code"] == "upstream_unreachable"
    assert refused.value.response.headers["x-ms-request-id"]


async def test_upstream_that_never_answers_times_out_with_504(relay: RelayHandle) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    relay.settings.relay_connect_timeout_s = 0.5
    await relay.add_resource("slow", f"ws://127.0.0.1:{port}")
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{relay.ws}/resources/slow/voice-live/realtime", additional_headers=AUTH):
                pass
        assert loop.time() - started < 5
    finally:
        server.close()
    assert refused.value.response.status_code == 504


async def test_upstream_refusal_status_is_passed_to_the_client(relay: RelayHandle) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{relay.ws}/resources/acme/voice-live/realtime",
                           additional_headers={"api-key": "wrong"}):
            pass
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body or b"{}")["code"] == "upstream_refused"


async def test_paths_other_than_the_realtime_ones_are_refused_with_404(relay: RelayHandle) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{relay.ws}/resources/acme/admin/secrets", additional_headers=AUTH):
            pass
    assert refused.value.response.status_code == 404
    assert json.loads(refused.value.response.body or b"{}")["code"] == "unknown_path"


async def test_client_pings_are_answered(relay: RelayHandle) -> None:
    async with connect(ECHO_URL.format(relay.ws), additional_headers=AUTH, ping_interval=None) as ws:
        for _ in range(3):
            pong = await ws.ping()
            latency = await asyncio.wait_for(pong, 2)
            assert latency >= 0
        await ws.send("after pings")
        assert await ws.recv() == "after pings"


async def test_message_over_4_mib_closes_with_1009_and_is_not_relayed(
    relay: RelayHandle, standin: StandinHandle
) -> None:
    async with connect(ECHO_URL.format(relay.ws), additional_headers=AUTH, max_size=None) as ws:
        async def oversize() -> None:
            await ws.send(b"\0" * (4 * 1024 * 1024 + 1))
            await asyncio.wait_for(ws.recv(), 5)

        with pytest.raises(ConnectionClosed) as closed:
            await oversize()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009
    (seen,) = standin.standin.sessions.values()
    assert seen.frames == []


def test_request_ids_are_valid_blob_names() -> None:
    from app.relay.routes import new_request_id
    from app.storage.layout import RecordingKey

    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for request_id in ids:
        RecordingKey(request_id, datetime.now(UTC))  # raises for a name the stores would refuse
