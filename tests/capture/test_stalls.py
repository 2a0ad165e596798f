"""The recorder never stalls on one slow dependency (issue 20): a backlog built while appends were held
is sealed in segments the store can take, and a hung database never holds up appends to a healthy store."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from websockets.asyncio.client import connect

from app.audit.actions import AuditAction
from app.audit.models import AuditEntryRow
from app.capture.models import Recording
from app.capture.settings import CaptureSettings
from app.clock import ManualClock
from app.identity.settings import IdentitySettings
from app.retention.orphans import OrphanSweep
from app.storage.layout import RecordingKey
from app.storage.settings import StorageSettings
from app.vault.envelope import unwrap_data_key
from app.vault.segments import OpenedStream, open_stream
from tests.fixtures.identity import MintToken
from tests.fixtures.recording import RecordingStack, recording_stack
from tests.fixtures.relay import STANDIN_API_KEY, StandinHandle

ECHO = "/voice-live/realtime?x-standin-mode=echo"
KiB = 1024


async def opened(stack: RecordingStack, request_id: str) -> OpenedStream:
    state = stack.relay.app.state.ctx
    row = await stack.recording(request_id)
    assert row.wrapped_dek is not None
    blob = b"".join([c async for c in state.stores.store(row.region).stream(RecordingKey(request_id, row.started_at))])
    dek = await unwrap_data_key(state.keyrings.for_region(row.region), row.wrapped_dek, region=row.region,
                                request_id=request_id)
    return open_stream(dek, blob, region=row.region, request_id=request_id)


async def test_a_backlog_past_the_segment_cap_is_sealed_in_appendable_segments(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Appends held for a while (as a stalled store or loop would): the ~1.2 MiB built up meanwhile is
    sealed in several segments under the cap, the store (limit 256 KiB a unit here, as Azure's 4 MiB in
    production) takes each, and the recording opens complete with every frame."""
    capture = CaptureSettings(tick_s=0.05, segment_seconds=0.5, heartbeat_s=0.5, retry_deadline_s=3.0,
                              segment_bytes=16 * KiB, segment_max_bytes=64 * KiB)
    storage = StorageSettings(create_containers=True, timeout_s=2.0, max_unit_bytes=256 * KiB)
    async with recording_stack(tmp_path, standin, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
                               identity=identity_settings, mint_token=mint_token, capture=capture,
                               storage=storage) as stack:
        store = stack.relay.app.state.ctx.stores.store("westeurope")
        real_append = store.append
        held = asyncio.Event()
        released = asyncio.Event()

        async def held_append(*args: Any, **kwargs: Any) -> int:
            if held.is_set():
                await released.wait()
            return await real_append(*args, **kwargs)

        monkeypatch.setattr(store, "append", held_append)
        url = f"{stack.relay.ws}/resources/{stack.resource}{ECHO}"
        sent: list[bytes] = []
        async with connect(url, additional_headers={"api-key": STANDIN_API_KEY}, max_size=None) as ws:
            request_id = ws.response.headers["x-ms-request-id"] if ws.response else ""
            await ws.send(b"first")
            await ws.recv()
            await asyncio.sleep(0.3)  # streaming: the header is stored
            held.set()
            for i in range(60):  # 60 x 10 KiB each way
                frame = i.to_bytes(4, "big") + os.urandom(10 * KiB)
                await ws.send(frame)
                assert await ws.recv() == frame
                sent.append(frame)
            await asyncio.sleep(1.0)  # sealing is held back behind the held append
            released.set()
            await ws.send(b"last")
            await ws.recv()
        row = await stack.recording(request_id, timeout=30)
        stream = await opened(stack, request_id)
        contents = await stack.contents(request_id)
    assert (row.state, row.incomplete_reason) == ("complete", None)
    assert stream.complete
    big = [s for s in stream.segments if len(s) > 16 * KiB]
    assert len(big) >= 10  # the backlog was cut, not sealed as one
    assert all(len(s) <= 64 * KiB for s in stream.segments)
    payloads = [f.payload for f in contents.frames if f.direction == 0]
    assert payloads == [b"first", *sent, b"last"]
    assert contents.gaps == []


class HungDatabase:
    """A session factory whose sessions never answer until `answer` is set, then fail: a frozen server."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.calls = 0

    def __call__(self) -> HungDatabase:
        return self

    async def __aenter__(self) -> HungDatabase:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        return None

    def add(self, _row: object) -> None:
        return None

    def get_bind(self) -> Any:
        raise ConnectionError("database frozen")

    async def _hang(self, *_args: object, **_kwargs: object) -> Any:
        self.calls += 1
        await self.answer.wait()
        raise ConnectionError("database frozen")

    execute = commit = rollback = get = scalar = _hang


async def test_a_hung_database_holds_up_no_append(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The database freezes (accepts, never answers) while the store is healthy: the heartbeat hangs, and
    segments keep being sealed and appended; once it answers again the recording ends complete."""
    capture = CaptureSettings(tick_s=0.05, segment_seconds=0.2, heartbeat_s=0.2, retry_deadline_s=30.0,
                              db_timeout_s=1.0)
    async with recording_stack(tmp_path, standin, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
                               identity=identity_settings, mint_token=mint_token, capture=capture) as stack:
        recorder = stack.relay.app.state.ctx.recorder
        store = stack.relay.app.state.ctx.stores.store("westeurope")
        real_append = store.append
        appends: list[float] = []
        loop = asyncio.get_running_loop()

        async def counted_append(*args: Any, **kwargs: Any) -> int:
            offset = await real_append(*args, **kwargs)
            appends.append(loop.time())
            return offset

        monkeypatch.setattr(store, "append", counted_append)
        url = f"{stack.relay.ws}/resources/{stack.resource}{ECHO}"
        async with connect(url, additional_headers={"api-key": STANDIN_API_KEY}) as ws:
            request_id = ws.response.headers["x-ms-request-id"] if ws.response else ""
            await ws.send(b"first")
            await ws.recv()
            await stack.recording(request_id, settled=False)
            await asyncio.sleep(0.5)  # streaming
            hung = HungDatabase()
            healthy = recorder.session_factory
            recorder.session_factory = hung
            frozen_at = loop.time()
            for i in range(150):  # 3 s of a frame every 20 ms
                await ws.send(i.to_bytes(4, "big") + os.urandom(960))
                await ws.recv()
                await asyncio.sleep(0.02)
            during = [t for t in appends if t > frozen_at + 1.0]
            hung_calls = hung.calls
            recorder.session_factory = healthy
            hung.answer.set()
            await ws.send(b"last")
            await ws.recv()
        row = await stack.recording(request_id, timeout=30)
        contents = await stack.contents(request_id)
    assert hung_calls >= 1  # the heartbeat did meet the frozen database
    assert len(during) >= 5  # segments kept reaching the healthy store while it hung
    assert (row.state, row.incomplete_reason) == ("complete", None)
    payloads = [f.payload for f in contents.frames if f.direction == 0]
    assert (payloads[0], payloads[-1], len(payloads)) == (b"first", b"last", 152)


class AnswerLostOnce:
    """A session factory whose first commit of a new recording row lands but answers with a timeout, as a
    hung server that wakes after the recorder's deadline does."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.lost = 0

    def __call__(self) -> Any:
        session = self.real()
        real_add, real_commit = session.add, session.commit
        added: list[object] = []

        def add(instance: object) -> None:
            added.append(instance)
            real_add(instance)

        async def commit() -> None:
            await real_commit()
            if any(isinstance(o, Recording) for o in added) and not self.lost:
                self.lost += 1
                raise TimeoutError("committed, but the answer was lost")

        session.add, session.commit = add, commit
        return session


async def test_a_row_whose_commit_answer_was_lost_is_written_once(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
) -> None:
    """The row's insert commits but the recorder hears a timeout: it defers the row, streams, finds the row
    on its next try and takes it as written; one row, one `recording.started`, and the recording is whole."""
    async with recording_stack(tmp_path, standin, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
                               identity=identity_settings, mint_token=mint_token) as stack:
        recorder = stack.relay.app.state.ctx.recorder
        lossy = AnswerLostOnce(recorder.session_factory)
        recorder.session_factory = lossy
        url = f"{stack.relay.ws}/resources/{stack.resource}{ECHO}"
        async with connect(url, additional_headers={"api-key": STANDIN_API_KEY}) as ws:
            request_id = ws.response.headers["x-ms-request-id"] if ws.response else ""
            for i in range(20):
                await ws.send(i.to_bytes(4, "big"))
                await ws.recv()
        row = await stack.recording(request_id, timeout=30)
        contents = await stack.contents(request_id)
        async with stack.relay.app.state.ctx.session_factory() as session:
            started = (await session.execute(select(AuditEntryRow.seq).where(
                AuditEntryRow.request_id == request_id,
                AuditEntryRow.action == AuditAction.RECORDING_STARTED.value))).all()
    assert lossy.lost == 1
    assert (row.state, row.incomplete_reason) == ("complete", None)
    assert len(started) == 1
    assert [f.payload for f in contents.frames if f.direction == 0] == [i.to_bytes(4, "big") for i in range(20)]


class RefusedDatabase:
    """A session factory whose every session is refused at its first statement: a stopped server."""

    def __call__(self) -> RefusedDatabase:
        return self

    async def __aenter__(self) -> RefusedDatabase:
        raise OperationalError("connect", {}, ConnectionRefusedError("database stopped"))

    async def __aexit__(self, *_exc: object) -> None:
        return None


async def test_a_recording_whose_process_died_before_its_deferred_row_is_swept_by_the_orphan_rule(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A call begun with the database away streams to its blob, and the process dies before the database is
    back: the blob has no row (its key died with the process), its request ID is in the log, and the orphan
    sweep keeps it counted until its bucket's 30 days have passed, then deletes it with `recording.purged`."""
    async with recording_stack(tmp_path, standin, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
                               identity=identity_settings, mint_token=mint_token) as stack:
        ctx = stack.relay.app.state.ctx
        recorder, healthy = ctx.recorder, ctx.recorder.session_factory
        store = ctx.stores.store("westeurope")
        recorder.session_factory = RefusedDatabase()
        async with connect(f"{stack.relay.ws}/resources/{stack.resource}{ECHO}",
                           additional_headers={"api-key": STANDIN_API_KEY}) as ws:
            request_id = ws.response.headers["x-ms-request-id"] if ws.response else ""
            for i in range(20):
                await ws.send(i.to_bytes(4, "big") + os.urandom(960))
                await ws.recv()
        async with asyncio.timeout(30):  # a hang guard: the call's frames reach the store at once
            while not (found := [o async for o in store.list_objects() if o.request_id == request_id]) \
                    or await store.length(found[0].key) < 20 * 964:
                await asyncio.sleep(0.05)
        blob = found[0]
        await recorder.stop(timeout=0.2)  # the process dies: nothing more is written
        recorder.live.clear()
        recorder.session_factory = healthy
        assert await stack.recordings() == []
        born = blob.created_at
        sweeps = []
        for later in (timedelta(hours=2), timedelta(days=31)):
            sweep = OrphanSweep(session_factory=healthy, clock=ManualClock(born + later), stores=ctx.stores,
                                min_age=timedelta(hours=1), lifetime=timedelta(days=30))
            result = await sweep.run()
            sweeps.append((result.orphans_kept, result.orphans_deleted, await store.exists(blob.key)))
        async with healthy() as session:
            purged = (await session.execute(select(AuditEntryRow.detail).where(
                AuditEntryRow.request_id == request_id,
                AuditEntryRow.action == AuditAction.RECORDING_PURGED.value))).scalars().all()
    assert any("recording.row_deferred" in r.getMessage() and request_id in r.getMessage() for r in caplog.records)
    assert sweeps == [(1, 0, True), (0, 1, False)]  # kept and counted while young, deleted at 30 days
    assert len(purged) == 1
    assert '"reason":"retention"' in purged[0]
