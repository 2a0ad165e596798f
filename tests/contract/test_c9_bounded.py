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

from app.capture.settings import CaptureSettings
from app.identity.settings import IdentitySettings
from app.relay.standin.server import Standin, StandinOptions, bound_port
from app.storage.errors import StoreUnavailable
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
