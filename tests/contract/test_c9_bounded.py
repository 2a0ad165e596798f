"""C9: recorder memory per session and per process has a cap; past it frames are dropped from the
recording (never from the call) and the gap is marked."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from websockets.asyncio.client import connect

from app.capture.frame_log import FRAME_OVERHEAD
from app.capture.settings import CaptureSettings
from app.identity.settings import IdentitySettings
from app.relay.standin.server import Standin, StandinOptions, bound_port
from app.storage.errors import StoreUnavailable
from tests.capture.test_stalls import HungDatabase
from tests.fixtures.identity import MintToken
from tests.fixtures.recording import recording_stack
from tests.fixtures.relay import STANDIN_API_KEY, StandinHandle

ECHO = "/voice-live/realtime?x-standin-mode=echo"
MiB = 1024 * 1024


@pytest.fixture
async def forgetful_standin() -> AsyncIterator[StandinHandle]:
    """A stand-in that keeps nothing: this process's memory is then the relay's and the recorder's."""
    instance = Standin(StandinOptions(api_key=STANDIN_API_KEY))
    server = await instance.start("127.0.0.1", 0)
    yield StandinHandle(instance, bound_port(server))
    server.close()
    await server.wait_closed()


async def test_a_flood_beyond_the_cap_keeps_memory_bounded_and_marks_the_gap(
    tmp_path: Path, forgetful_standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    standin = forgetful_standin
    capture = CaptureSettings(tick_s=0.05, segment_seconds=0.5, heartbeat_s=0.5, retry_deadline_s=120,
                              session_cap_bytes=2 * MiB, process_cap_bytes=4 * MiB)
    async with recording_stack(tmp_path, standin, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
                               identity=identity_settings, mint_token=mint_token, capture=capture) as stack:
        store = stack.relay.app.state.ctx.stores.store("westeurope")
        real_append = store.append
        outage = asyncio.Event()

        async def append_during_outage(*args: object, **kwargs: object) -> int:
            if outage.is_set():
                await asyncio.sleep(0.05)
                raise StoreUnavailable("simulated outage")
            return await real_append(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "append", append_during_outage)
        url = f"{stack.relay.ws}/resources/{stack.resource}{ECHO}"
        process = psutil.Process()
        frame = os.urandom(64 * 1024)
        async with connect(url, additional_headers={"api-key": STANDIN_API_KEY}, max_size=None) as ws:
            request_id = ws.response.headers["x-ms-request-id"] if ws.response else ""
            await ws.send(b"first")
            assert await ws.recv() == b"first"
            await asyncio.sleep(0.3)  # the recording started and stored its header
            outage.set()  # nothing can be stored now: without a cap the recorder would keep it all
            rss_before = process.memory_info().rss
            for i in range(2400):  # 150 MiB relayed, 75x the session cap
                message = i.to_bytes(4, "big") + frame
                await ws.send(message)
                assert await ws.recv() == message  # the call itself loses nothing
            rss_growth = process.memory_info().rss - rss_before
            held = stack.relay.app.state.ctx.recorder.budget.used
            outage.clear()
            await ws.send(b"last")
            assert await ws.recv() == b"last"
        row = await stack.recording(request_id, timeout=30)
        contents = await stack.contents(request_id)
    assert held <= 4 * MiB
    assert rss_growth < 60 * MiB, f"RSS grew {rss_growth / MiB:.0f} MiB"
    assert row.state == "complete"
    assert row.dropped_frames > 4000  # both directions of the flood, less what fit under the cap
    assert contents.gaps
    assert {gap.reason for gap in contents.gaps} == {"session_cap"}
    assert sum(gap.frames for gap in contents.gaps) == row.dropped_frames
    payloads = [f.payload for f in contents.frames if f.direction == 0]
    assert payloads[0] == b"first"
    assert payloads[-1] == b"last"
    kept = len(payloads) - 2
    assert 0 < kept < 40  # about 2 MiB of 64 KiB frames fit under the cap


async def test_the_backlog_gauge_counts_every_byte_held_while_the_sealer_is_held_up(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Appends held and the database frozen: `voicelog_recorder_backlog_bytes` is the bytes held (buffered
    frames and sealed segments not yet stored), not the value from before the stall."""
    capture = CaptureSettings(tick_s=0.05, segment_seconds=0.2, heartbeat_s=0.2, retry_deadline_s=30.0,
                              db_timeout_s=1.0)
    async with recording_stack(tmp_path, standin, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
                               identity=identity_settings, mint_token=mint_token, capture=capture) as stack:
        ctx = stack.relay.app.state.ctx
        recorder = ctx.recorder
        store = ctx.stores.store("westeurope")
        real_append = store.append
        released = asyncio.Event()

        async def held_append(*args: object, **kwargs: object) -> int:
            await released.wait()
            return await real_append(*args, **kwargs)  # type: ignore[arg-type]

        url = f"{stack.relay.ws}/resources/{stack.resource}{ECHO}"
        async with connect(url, additional_headers={"api-key": STANDIN_API_KEY}) as ws:
            request_id = ws.response.headers["x-ms-request-id"] if ws.response else ""
            await ws.send(b"first")
            await ws.recv()
            await stack.recording(request_id, settled=False)
            await asyncio.sleep(0.5)  # streaming, nothing held
            monkeypatch.setattr(store, "append", held_append)
            hung = HungDatabase()
            healthy = recorder.session_factory
            recorder.session_factory = hung
            frame = os.urandom(8 * 1024)
            for _ in range(100):
                await ws.send(frame)
                await ws.recv()
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)  # a few segments sealed and waiting
            live = recorder.live[request_id]
            held = live.buffer.held
            pending = sum(size for _, size in live.pending)
            gauge = recorder.metrics.backlog.collect()[0].samples[0].value
            recorder.session_factory = healthy
            hung.answer.set()
            released.set()
        await stack.recording(request_id, timeout=30)
    frame_bytes = 2 * 100 * (len(frame) + FRAME_OVERHEAD)  # both directions
    assert gauge == held  # one recording: everything it holds, sealed or not
    assert pending > 0  # some of it was sealed, not yet stored
    assert frame_bytes <= gauge <= frame_bytes + 64 * 1024  # plus the few small frames before the stall
