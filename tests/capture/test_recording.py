"""Consented sessions are recorded, both directions, every frame, in the resource's region (C1, C3)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from azure.ai.voicelive.aio import connect as sdk_connect
from azure.ai.voicelive.models import RequestSession
from azure.core.credentials import AzureKeyCredential
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from websockets.asyncio.client import connect

from app.audit.models import AuditEntryRow, AuditInboxRow
from app.capture.frame_log import C2S, S2C, TEXT
from app.capture.models import Recording
from app.capture.settings import CaptureSettings
from app.identity.settings import IdentitySettings
from app.regions import RegionSettings
from app.storage.errors import NotFound
from app.storage.layout import RecordingKey
from app.tickets.models import Consent
from app.vault.envelope import unwrap_data_key
from app.vault.errors import MalformedHeader, ShortRead
from app.vault.segments import OpenedStream, open_stream
from tests.fixtures.audit import audit_rows
from tests.fixtures.blob import AzuriteRegions
from tests.fixtures.identity import MintToken
from tests.fixtures.recording import RecordingStack, recording_stack
from tests.fixtures.relay import STANDIN_API_KEY, StandinHandle
from tests.relay.audio import frames, speech_like

ECHO = "/voice-live/realtime?x-standin-mode=echo"


def as_bytes(message: str | bytes) -> bytes:
    return message.encode() if isinstance(message, str) else message


async def sdk_session(stack: RecordingStack, standin: StandinHandle, marker: str) -> str:
    """One SDK conversation; returns its request ID (as the upstream saw it in x-ms-client-request-id)."""
    async with sdk_connect(endpoint=stack.endpoint, credential=AzureKeyCredential(STANDIN_API_KEY),
                           model="gpt-4o") as conn:
        await conn.session.update(session=RequestSession(instructions=f"Say {marker}"))
        for chunk in frames(speech_like(1.5)):
            await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        async for event in conn:
            if event.type == "response.done":
                break
    return list(standin.standin.sessions)[-1]


@pytest.fixture(params=["local", "azurite"])
def regions(request: pytest.FixtureRequest, tmp_path: Path) -> list[RegionSettings] | None:
    if request.param == "local":
        return None
    azurite: AzuriteRegions = request.getfixturevalue("azurite")
    for server in azurite.servers.values():
        if not server.running:
            server.start()
    return azurite.region_settings(container=f"rec{tmp_path.name[-8:].lower().replace('_', '')}")


async def test_consented_sdk_session_is_recorded_exactly_in_its_region(
    tmp_path: Path, standin: StandinHandle, app_db_url: str, identity_settings: IdentitySettings,
    mint_token: MintToken, regions: list[RegionSettings] | None,
) -> None:
    async with recording_stack(tmp_path, standin, database_url=app_db_url, identity=identity_settings,
                               mint_token=mint_token, regions=regions) as stack:
        request_id = await sdk_session(stack, standin, "ORCHID-41")
        row = await stack.recording(request_id)
        contents = await stack.contents(request_id)
        stores = stack.relay.app.state.ctx.stores
        key = RecordingKey(request_id, row.started_at)
        in_region = await stores.store("westeurope").exists(key)
        elsewhere = await stores.store("eastus").exists(key)
        async with stack.relay.app.state.ctx.session_factory() as session:
            actions = [r[0] for r in await audit_rows(session, "action")]
    assert row.state == "complete"
    assert (row.region, row.ticket_id, row.wrapped_dek is not None) == ("westeurope", stack.ticket_id, True)
    assert row.blob_name == key.name
    assert (in_region, elsewhere) == (True, False)  # C3
    received = standin.standin.sessions[request_id]
    c2s = [f.payload for f in contents.frames if f.direction == C2S]
    s2c = [f.payload for f in contents.frames if f.direction == S2C]
    assert c2s == [as_bytes(m) for m in received.frames]  # every frame, same bytes, same order
    assert s2c == [as_bytes(m) for m in received.sent]
    assert all(f.opcode == TEXT for f in contents.frames)
    offsets = [f.offset_us for f in contents.frames]
    assert offsets == sorted(offsets) or len({f.direction for f in contents.frames}) == 2
    assert contents.complete
    assert contents.end is not None
    assert contents.gaps == []
    assert b"ORCHID-41" in b"".join(c2s)
    assert "recording.started" in actions
    assert "recording.sealed-summary" in actions


async def test_binary_frames_and_timing_are_kept(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
) -> None:
    async with recording_stack(tmp_path, standin, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
                               identity=identity_settings, mint_token=mint_token) as stack:
        url = f"{stack.relay.ws}/resources/{stack.resource}{ECHO}"
        async with connect(url, additional_headers={"api-key": STANDIN_API_KEY}) as ws:
            request_id = ws.response.headers["x-ms-request-id"] if ws.response else ""
            for i in range(20):
                await ws.send(bytes([i]) * (i + 1))
                await ws.recv()
        contents = await stack.contents(request_id)
    sent = [f for f in contents.frames if f.direction == C2S]
    assert [f.payload for f in sent] == [bytes([i]) * (i + 1) for i in range(20)]
    assert all(f.opcode == 2 for f in contents.frames)
    assert all(b.offset_us >= a.offset_us for a, b in itertools.pairwise(sent))


async def test_without_consent_nothing_is_stored_anywhere(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """C1: no row, no blob, no recorder log line, no file."""
    async with recording_stack(tmp_path, standin, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
                               identity=identity_settings, mint_token=mint_token, consent=False) as stack:
        before = {p for p in tmp_path.rglob("*") if p.is_file()}
        url = f"{stack.relay.ws}/resources/{stack.resource}{ECHO}"
        async with connect(url, additional_headers={"api-key": STANDIN_API_KEY}) as ws:
            request_id = ws.response.headers["x-ms-request-id"] if ws.response else ""
            for _ in range(50):
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA"}))
                await ws.recv()
        assert stack.relay.app.state.ctx.recorder.live == {}
        async with stack.relay.app.state.ctx.session_factory() as session:
            rows = (await session.execute(select(func.count()).select_from(Recording))).scalar_one()
            audited = [*(await session.execute(select(AuditEntryRow.request_id))).scalars(),
                       *(await session.execute(select(AuditInboxRow.request_id))).scalars()]
        blobs = [o for r in ("eastus", "westeurope")
                 async for o in stack.relay.app.state.ctx.stores.store(r).list_objects()]
        after = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert rows == 0
    assert blobs == []
    assert request_id not in audited
    # The only files a process may add meanwhile are the database's journal and the audit trail's own
    # checkpoint export and signing keys (hashes and keys, nothing of any session).
    new_files = {p for p in after - before if not p.name.endswith(("-wal", "-shm", "-journal"))
                 and p.name != "audit-checkpoints.jsonl" and "audit-keys" not in p.parts}
    assert new_files == set()
    lines = [r.getMessage() for r in caplog.records if request_id in r.getMessage()]
    assert lines
    assert all("relay.session" in line for line in lines)  # only the relay's own access log


async def test_withdrawal_stops_new_recordings_within_the_documented_bound(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bound is `consent_refresh_s` (0.2 s here) plus one reload, on every replica: checked as "the first
    reload that starts after the withdrawal commits drops the consent", not by a wall clock a loaded machine
    can stall."""
    async with recording_stack(tmp_path, standin, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
                               identity=identity_settings, mint_token=mint_token, consent=False) as stack:
        consent_id = await stack.grant_consent()
        url = f"{stack.relay.ws}/resources/{stack.resource}{ECHO}"
        consents = stack.relay.app.state.ctx.consents
        loop = asyncio.get_running_loop()
        reloads: list[tuple[float, float]] = []  # (started, finished) of each reload the cache's loop completed
        reload = consents.reload

        async def observed_reload(session_factory: async_sessionmaker[AsyncSession]) -> None:
            started = loop.time()
            await reload(session_factory)
            reloads.append((started, loop.time()))

        monkeypatch.setattr(consents, "reload", observed_reload)

        async def one_session() -> str:
            async with connect(url, additional_headers={"api-key": STANDIN_API_KEY}) as ws:
                await ws.send("hi")
                await ws.recv()
                return ws.response.headers["x-ms-request-id"] if ws.response else ""

        recorded = await one_session()
        # Withdraw through the database only, as another replica would: this replica learns it by reloading.
        async with stack.relay.app.state.ctx.session_factory() as session:
            consent = await session.get(Consent, consent_id)
            assert consent is not None
            consent.ended_at = datetime.now(UTC)
            consent.end_reason = "withdrawn"
            await session.commit()
        withdrawn_at = loop.time()
        deadline = withdrawn_at + 10  # a sanity bound only: the cache reloads every 0.2 s
        while not any(started > withdrawn_at for started, _ in reloads):
            assert loop.time() < deadline, f"no reload started after the withdrawal within 10 s: {reloads}"
            await asyncio.sleep(0.02)
        after_one_reload = consents.lookup(stack.resource_id)
        not_recorded = await one_session()
        # The sealer writes rows in the background: once the first session's is settled, a row of the
        # second (written at its first step, as the first one's was) would be there too.
        await stack.recording(recorded)
        rows = {r.request_id for r in await stack.recordings()}
    assert recorded in rows
    assert after_one_reload is None  # one reload after the commit is all it takes
    assert not_recorded not in rows


DURABLE_WITHIN_S = 3.0  # the documented bound on default settings
LOAD_SLACK_S = 5.0  # a loaded CI machine may stall the event loop and the sealer's thread for seconds


async def stored_so_far(stack: RecordingStack, request_id: str) -> tuple[Recording, OpenedStream | None]:
    """The row, and the stream as stored right now (None while nothing whole is stored yet)."""
    state = stack.relay.app.state.ctx
    row = await stack.recording(request_id, settled=False)
    if row.wrapped_dek is None:
        return row, None
    try:
        blob = b"".join([c async for c in state.stores.store(row.region).stream(
            RecordingKey(request_id, row.started_at))])
        dek = await unwrap_data_key(state.keyrings.for_region(row.region), row.wrapped_dek,
                                    region=row.region, request_id=request_id)
        return row, open_stream(dek, blob, region=row.region, request_id=request_id)
    except (NotFound, MalformedHeader, ShortRead):  # not created yet, or caught mid-append
        return row, None


async def when_durable(stack: RecordingStack, request_id: str, payload: bytes, *, timeout: float
                       ) -> tuple[Recording, OpenedStream]:
    """Poll the store until `payload` is in a sealed segment; fail with what was stored after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        row, opened = await stored_so_far(stack, request_id)
        if opened is not None and payload in opened.plaintext:
            return row, opened
        if loop.time() > deadline:
            raise AssertionError(f"{payload!r} not durable within {timeout} s: row {row.state}, "
                                 f"segments {opened and len(opened.segments)}")
        await asyncio.sleep(0.1)


async def test_a_frame_is_durable_within_three_seconds_on_default_settings(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
) -> None:
    """Default cadence (a segment every 2 s, the sealer looking for due seals every 20 ms): while the session is still
    open, a frame relayed 3 s ago is in the store, sealed, and opens (as a truncated stream). Polled, with
    slack on the bound for a loaded machine; a frame held back for several segments still fails."""
    async with recording_stack(tmp_path, standin, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
                               identity=identity_settings, mint_token=mint_token,
                               capture=CaptureSettings()) as stack:
        url = f"{stack.relay.ws}/resources/{stack.resource}{ECHO}"
        loop = asyncio.get_running_loop()
        async with connect(url, additional_headers={"api-key": STANDIN_API_KEY}) as ws:
            request_id = ws.response.headers["x-ms-request-id"] if ws.response else ""
            sent_at = loop.time()
            await ws.send(b"durable-frame")
            await ws.recv()
            row, opened = await when_durable(stack, request_id, b"durable-frame", timeout=30)
            durable_after = loop.time() - sent_at
    assert row.state == "recording"
    assert opened.truncated  # the session is still open: no final segment yet
    assert b"durable-frame" in opened.plaintext
    assert durable_after <= DURABLE_WITHIN_S + LOAD_SLACK_S, durable_after


def call_times(monkeypatch: pytest.MonkeyPatch, store: object, method: str) -> list[float]:
    """The loop time of every call of `store.<method>` from now on; the calls themselves are unchanged."""
    real = getattr(store, method)
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def timed(*args: Any, **kwargs: Any) -> Any:
        times.append(loop.time())
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, method, timed)
    return times


async def paced_call(url: str, frames: list[bytes], pause_s: float) -> str:
    """One call that sends each frame, waits for its echo, then pauses; its request ID."""
    async with connect(url, additional_headers={"api-key": STANDIN_API_KEY}) as ws:
        request_id = ws.response.headers["x-ms-request-id"] if ws.response else ""
        for frame in frames:
            await ws.send(frame)
            await ws.recv()
            await asyncio.sleep(pause_s)
    return request_id


async def test_streaming_recordings_are_sealed_at_the_seal_pace_between_ticks(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A coarse tick (1.5 s) with the fine seal pace: a call's 0.2 s segments are stored as they fall due, many
    while the call is open, not one tick's worth at a time, and the recording is complete with every frame.
    (Sealed only at ticks, a 2.5 s call would see at most a handful of appends.)"""
    capture = CaptureSettings(tick_s=1.5, seal_pace_s=0.02, segment_seconds=0.2, heartbeat_s=0.5,
                              retry_deadline_s=3.0)
    async with recording_stack(tmp_path, standin, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
                               identity=identity_settings, mint_token=mint_token, capture=capture) as stack:
        appended_at = call_times(monkeypatch, stack.relay.app.state.ctx.stores.store("westeurope"), "append")
        url = f"{stack.relay.ws}/resources/{stack.resource}{ECHO}"
        sent = [f"frame-{i:03d}".encode() for i in range(50)]
        request_id = await paced_call(url, sent, 0.05)
        closed_at = asyncio.get_running_loop().time()
        while_open = [t for t in appended_at if t < closed_at]
        contents = await stack.contents(request_id)
    assert len(while_open) >= 7, f"{len(while_open)} appends while the call was open"
    assert contents.complete
    assert [f.payload for f in contents.frames if f.direction == C2S] == sent


async def test_a_burst_of_calls_starts_its_recordings_at_the_start_rate_and_loses_no_frame(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Eight calls at once with `starts_per_s=4`: their recordings' blobs are created spread over about two
    seconds, not all in one tick, and each recording is complete with every frame its call sent meanwhile."""
    capture = CaptureSettings(tick_s=0.05, segment_seconds=0.5, heartbeat_s=0.5, retry_deadline_s=3.0,
                              starts_per_s=4)
    async with recording_stack(tmp_path, standin, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
                               identity=identity_settings, mint_token=mint_token, capture=capture) as stack:
        created_at = call_times(monkeypatch, stack.relay.app.state.ctx.stores.store("westeurope"), "create")
        url = f"{stack.relay.ws}/resources/{stack.resource}{ECHO}"
        sent = [f"frame-{i:02d}".encode() for i in range(25)]
        request_ids = await asyncio.gather(*(paced_call(url, sent, 0.1) for _ in range(8)))
        contents = [await stack.contents(request_id) for request_id in request_ids]
    assert len(created_at) == 8
    assert max(created_at) - min(created_at) >= 1.0, sorted(t - min(created_at) for t in created_at)
    for recorded in contents:
        assert recorded.complete
        assert [f.payload for f in recorded.frames if f.direction == C2S] == sent
