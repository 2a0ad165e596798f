"""Timeouts, drain, backpressure and a failing tap: the relay never hangs and never harms a call."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.relay.tap import Direction, FrameTap, SessionInfo
from tests.fixtures.relay import STANDIN_API_KEY, RelayHandle, StandinHandle, relay_for

AUTH = {"api-key": STANDIN_API_KEY}
ECHO = "/resources/acme/voice-live/realtime?x-standin-mode=echo"


async def test_idle_session_is_closed_with_1001(tmp_path: Path, standin: StandinHandle) -> None:
    async with relay_for(tmp_path, standin, relay_idle_timeout_s=0.5) as relay, \
            connect(relay.ws + ECHO, additional_headers=AUTH) as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "idle timeout")


async def test_session_longer_than_the_maximum_is_closed(tmp_path: Path, standin: StandinHandle) -> None:
    async with relay_for(tmp_path, standin, relay_max_session_s=1.0) as relay, \
            connect(relay.ws + ECHO, additional_headers=AUTH) as ws:
        async def keep_busy() -> None:  # the cap applies to active sessions too
            for _ in range(100):
                await ws.send("x")
                await ws.recv()
                await asyncio.sleep(0.05)

        with pytest.raises(ConnectionClosed) as closed:
            await keep_busy()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001
    assert closed.value.rcvd.reason == "maximum session length reached"


DRAIN_S = 5.0  # the live session must still get a word in on a slow, loaded machine


async def test_drain_refuses_new_sessions_lets_live_ones_run_then_closes_them(relay: RelayHandle) -> None:
    registry = relay.app.state.ctx.relay.registry
    async with connect(relay.ws + ECHO, additional_headers=AUTH) as ws:
        draining = asyncio.create_task(registry.drain(DRAIN_S))
        deadline = asyncio.get_running_loop().time() + DRAIN_S
        while not registry.draining:
            assert asyncio.get_running_loop().time() < deadline, "the drain never started"
            await asyncio.sleep(0.01)
        with pytest.raises(InvalidStatus) as refused:
            async with connect(relay.ws + ECHO, additional_headers=AUTH):
                pass
        assert refused.value.response.status_code == 503
        await ws.send("still here")  # the live session keeps working during the drain
        assert await ws.recv() == "still here"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), DRAIN_S + 10)
        assert await draining == 1
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001


class ExplodingTap:
    def __init__(self) -> None:
        self.calls = 0

    def on_frame(self, direction: Direction, offset_ns: int, payload: bytes, text: bool) -> None:
        self.calls += 1
        raise RuntimeError("recorder broke")

    def on_close(self, client_code: int | None, upstream_code: int | None, reason: str) -> None:
        raise RuntimeError("recorder broke again")


class Factory:
    def __init__(self, tap: FrameTap | None, delay: float = 0.0, fail: bool = False) -> None:
        self.tap, self.delay, self.fail = tap, delay, fail

    async def open(self, info: SessionInfo) -> FrameTap | None:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("database down")
        return self.tap


@pytest.mark.parametrize("factory", [
    pytest.param(lambda: Factory(ExplodingTap()), id="tap-raises"),
    pytest.param(lambda: Factory(None, delay=30), id="tap-open-hangs"),
    pytest.param(lambda: Factory(None, fail=True), id="tap-open-fails"),
])
async def test_a_failing_recorder_tap_never_harms_the_session(
    tmp_path: Path, standin: StandinHandle, factory: object
) -> None:
    tap_factory = factory()  # type: ignore[operator]
    frames = [os.urandom(100 + i) for i in range(50)]
    loop = asyncio.get_running_loop()
    async with relay_for(tmp_path, standin, tap_factory=tap_factory) as relay:
        started = loop.time()
        async with connect(relay.ws + ECHO, additional_headers=AUTH) as ws:
            assert loop.time() - started < 2  # a hanging recorder does not hold the handshake
            for frame in frames:
                await ws.send(frame)
            assert [await ws.recv() for _ in frames] == frames
        metrics = relay.app.state.ctx.metrics.relay
    failures = sum(s.value for m in metrics.errors.collect() for s in m.samples
                   if s.name.endswith("_total") and s.labels["reason"].startswith("tap_"))
    assert failures >= 1
    if isinstance(tap_factory.tap, ExplodingTap):
        assert tap_factory.tap.calls == 1  # detached after its first failure


async def test_a_slow_reader_slows_the_writer_instead_of_growing_buffers(relay: RelayHandle) -> None:
    frame = os.urandom(64 * 1024)
    total = 5000  # 320 MiB: far more than any buffer on the way may hold
    sent = 0
    async with connect(relay.ws + ECHO, additional_headers=AUTH, max_queue=4) as ws:
        async def writer() -> None:
            nonlocal sent
            for i in range(total):
                await ws.send(i.to_bytes(4, "big") + frame)
                sent += 1

        writing = asyncio.create_task(writer())
        await asyncio.sleep(3)  # nobody reads the echoes meanwhile
        stalled_at = sent
        assert not writing.done()
        assert stalled_at < 1500, f"{stalled_at} frames ({stalled_at * 64 // 1024} MiB) buffered"
        for i in range(total):  # now read: everything arrives, in order, nothing dropped
            echoed = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(echoed, bytes)
            assert int.from_bytes(echoed[:4], "big") == i
        await writing
