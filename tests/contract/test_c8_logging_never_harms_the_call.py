"""C8: a failing store, database or key service never closes, delays or alters a relayed session.

Each test runs a real-time-paced session (a frame every 20 ms, echoed back) through a recording relay,
breaks one dependency of the recorder in the middle, and checks that every frame came back identical
and no frame waited on the recorder, and that the recording ends incomplete with the right reason.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr
from websockets.asyncio.client import connect

from app.identity.settings import IdentitySettings
from app.regions import RegionSettings
from app.vault.errors import KeyServiceError
from tests.fixtures.blob import AzuriteServer
from tests.fixtures.database import PG_HOST, PG_PORT, PG_USER
from tests.fixtures.identity import MintToken
from tests.fixtures.recording import RecordingStack, recording_stack
from tests.fixtures.relay import STANDIN_API_KEY, StandinHandle

ECHO = "/voice-live/realtime?x-standin-mode=echo"
HANG = 1.0  # no frame of a healthy loopback echo takes this long; one that waited on the recorder would


async def paced_session(stack: RecordingStack, seconds: float, break_at: float,
                        breaker: Callable[[], Any]) -> tuple[str, float]:
    """Send a frame every 20 ms for `seconds`, call `breaker` at `break_at`; returns (request id, worst RTT)."""
    url = f"{stack.relay.ws}/resources/{stack.resource}{ECHO}"
    worst = 0.0
    async with connect(url, additional_headers={"api-key": STANDIN_API_KEY}) as ws:
        request_id = ws.response.headers["x-ms-request-id"] if ws.response else ""
        start = time.monotonic()
        broken = False
        for i in range(int(seconds / 0.02)):
            if not broken and time.monotonic() - start >= break_at:
                result = breaker()
                if asyncio.iscoroutine(result):
                    await result
                broken = True
            frame = i.to_bytes(4, "big") + os.urandom(960)
            sent = time.monotonic()
            await ws.send(frame)
            assert await asyncio.wait_for(ws.recv(), 5) == frame
            worst = max(worst, time.monotonic() - sent)
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))
    return request_id, worst


async def test_blob_store_dying_mid_session(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
    azurite_factory: Callable[[str], AzuriteServer],
) -> None:
    server = azurite_factory("vlc8store")
    regions = [RegionSettings(name="eastus"),
               RegionSettings(name="westeurope", blob_backend="azure", blob_container="c8store",
                              blob_connection_string=SecretStr(server.connection_string))]
    async with recording_stack(tmp_path, standin, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
                               identity=identity_settings, mint_token=mint_token, regions=regions) as stack:
        request_id, worst = await paced_session(stack, seconds=6, break_at=1.5, breaker=server.stop)
        row = await stack.recording(request_id, timeout=30)
    assert worst < HANG
    assert (row.state, row.incomplete_reason) == ("incomplete", "store_unavailable")
    assert row.segments >= 1  # what was stored before the outage is kept


@pytest.mark.parametrize("session_cap", [None, 65536], ids=["within-memory", "past-the-session-cap"])
async def test_recording_resumes_when_the_store_comes_back_after_the_retry_deadline(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
    azurite_factory: Callable[[str], AzuriteServer], session_cap: int | None,
) -> None:
    """The store is away for 4 s or more of a 12 s call, longer than the 3 s retry deadline: the recording
    waits (in memory, within its cap) and ends complete; frames past the cap are a marked gap, never a lost
    tail."""
    from app.capture.settings import CaptureSettings
    from tests.fixtures.recording import FAST_CAPTURE

    server = azurite_factory("vlc8resume")
    regions = [RegionSettings(name="eastus"),
               RegionSettings(name="westeurope", blob_backend="azure", blob_container="c8resume",
                              blob_connection_string=SecretStr(server.connection_string))]
    capture = FAST_CAPTURE if session_cap is None else CaptureSettings(
        **{**FAST_CAPTURE.model_dump(), "session_cap_bytes": session_cap})

    async def outage() -> None:
        await asyncio.to_thread(server.stop)

        async def back_later() -> None:
            await asyncio.sleep(3.0)
            await asyncio.to_thread(server.start)
            back_at.append(time.monotonic())

        outages.append(asyncio.create_task(back_later()))

    outages: list[asyncio.Task[None]] = []
    back_at: list[float] = []
    async with recording_stack(tmp_path, standin, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
                               identity=identity_settings, mint_token=mint_token, regions=regions,
                               capture=capture) as stack:
        started = time.monotonic()
        request_id, worst = await paced_session(stack, seconds=12, break_at=1.0, breaker=outage)
        ended = time.monotonic()
        await outages[0]
        row = await stack.recording(request_id, timeout=30)
        contents = await stack.contents(request_id)
    assert worst < HANG
    assert back_at[0] - started > 4.0  # the outage outlasted the retry deadline
    assert row.state == "complete"
    assert contents.complete
    sent = [f for f in contents.frames if f.direction == 0]
    if session_cap is None:
        assert len(sent) == 600  # every frame of the call, the outage's included
        assert contents.gaps == []
    else:
        assert contents.gaps  # the outage outlasted the cap: frames were dropped from the recording, marked
        dropped = sum(g.frames for g in contents.gaps)
        assert len(sent) + sum(1 for f in contents.frames if f.direction == 1) + dropped == 1200
        assert back_at[0] < ended - 1.0, "the store came back too late in the call to show recording resume"
        assert sent[-1].payload[:4] == (599).to_bytes(4, "big")  # recording resumed: the call's end is there


class FailingKeyring:
    def __getattr__(self, name: str) -> Callable[..., Any]:
        async def fail(*_args: object, **_kwargs: object) -> None:
            raise KeyServiceError("key service down")

        return fail


async def test_key_service_failing(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with recording_stack(tmp_path, standin, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
                               identity=identity_settings, mint_token=mint_token) as stack:
        monkeypatch.setattr(stack.relay.app.state.ctx.keyrings, "for_region", lambda _region: FailingKeyring())
        request_id, worst = await paced_session(stack, seconds=2, break_at=0, breaker=lambda: None)
        row = await stack.recording(request_id, timeout=30)
    assert worst < HANG
    assert (row.state, row.incomplete_reason) == ("incomplete", "key_service_unavailable")
    assert row.wrapped_dek is None  # no key was ever made: nothing of the session is stored


def terminate_connections(database: str) -> None:
    with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres", autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))


async def test_database_connections_dropped_mid_session(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
    migrated_databases: dict[str, str],
) -> None:
    url = migrated_databases["postgresql"]
    database = url.rsplit("/", 1)[1]
    async with recording_stack(tmp_path, standin, database_url=url, identity=identity_settings,
                               mint_token=mint_token) as stack:
        request_id, worst = await paced_session(
            stack, seconds=4, break_at=1.0, breaker=lambda: asyncio.to_thread(terminate_connections, database))
        row = await stack.recording(request_id, timeout=30)
        contents = await stack.contents(request_id)
    assert worst < HANG
    assert row.state == "complete"  # the recorder reconnected and finished the recording
    assert contents.complete
    assert len([f for f in contents.frames if f.direction == 0]) == 200
