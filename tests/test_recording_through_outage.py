"""The recorder stores while the database is away (issue 20): PostgreSQL stopped (connections refused) or
hung (accepting, never answering) for 60 s while 20 calls are recorded, ten begun before the outage and
ten during it, some ending in it and some after. Every recording ends complete, decrypts whole, and has
its row and audit entries once the database is back; a call begun once the consent cache has gone stale
is relayed and not recorded (C1)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection, connect

from app.audit.actions import AuditAction
from app.audit.models import AuditEntryRow
from app.capture.settings import CaptureSettings
from app.identity.settings import IdentitySettings
from tests.fixtures.identity import MintToken
from tests.fixtures.recording import RecordingStack, recording_stack
from tests.fixtures.relay import STANDIN_API_KEY, StandinHandle
from tests.relay.test_resource_directory import set_reachable
from tests.test_database_outage import private_pg, proxied

__all__ = ["private_pg"]  # the fixture, used by name

OUTAGE_S = 60.0  # the figure
FRAME_EVERY_S = 0.1  # 100 ms of audio a frame, as SDK clients send it
FRAME_BYTES = 4800  # 100 ms of 24 kHz 16-bit mono PCM
STALE_CONSENTS_S = 30.0  # ConsentCache.stale_after_s: past it, with no reload, nothing new is recorded (C1)
ECHO = "/voice-live/realtime?x-standin-mode=echo"


@dataclass
class Call:
    """One paced call: starts and ends at offsets (s) from the outage's start, keeps what it sent and got."""

    name: str
    start_s: float
    end_s: float
    request_id: str = ""
    sent: list[bytes] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)


def schedule() -> list[Call]:
    """Ten calls begun before the outage and ten during it (within the consent cache's freshness); half of
    each end during the outage and half after it."""
    calls = []
    for i in range(10):
        end = 15.0 + 4 * i if i < 5 else OUTAGE_S + 1 + 0.3 * i
        calls.append(Call(f"before-{i}", -3.0 + 0.1 * i, end))
    for j in range(10):
        end = 25.0 + 4 * j if j < 5 else OUTAGE_S + 1 + 0.3 * j
        calls.append(Call(f"during-{j}", 2.0 + 1.5 * j, end))
    return calls


async def paced_call(stack: RecordingStack, call: Call, t0: float, index: int) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t0 + call.start_s - loop.time()))
    async with connect(f"{stack.relay.ws}/resources/{stack.resource}{ECHO}",
                       additional_headers={"api-key": STANDIN_API_KEY}, max_size=None) as ws:
        call.request_id = ws.response.headers["x-ms-request-id"] if ws.response else ""
        seq = 0
        while loop.time() < t0 + call.end_s:
            frame = bytes([index]) + seq.to_bytes(4, "big") + bytes(FRAME_BYTES - 5)
            await exchange(ws, frame, call)
            seq += 1
            await asyncio.sleep(FRAME_EVERY_S)


async def exchange(ws: ClientConnection, frame: bytes, call: Call) -> None:
    await ws.send(frame)
    call.sent.append(frame)
    call.received.append(bytes(await ws.recv()))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def outage_stack(kind: str, tmp_path: Path, standin: StandinHandle, identity: IdentitySettings,
                       mint_token: MintToken, name: str, url: str) -> AsyncIterator[tuple[RecordingStack, object]]:
    """The recording stack on the test's own PostgreSQL, through the freezable proxy when `kind` is hung."""
    capture = CaptureSettings(tick_s=0.1, segment_seconds=1.0, heartbeat_s=1.0, db_timeout_s=2.0)
    pools = {"database_pool_size": 2, "database_max_overflow": 3, "database_request_pool_size": 1,
             "database_connect_timeout_s": 2.0}
    async with contextlib.AsyncExitStack() as stack:
        proxy: object = name
        if kind == "hung":
            proxy, url = await stack.enter_async_context(proxied(url))
        yield await stack.enter_async_context(recording_stack(
            tmp_path, standin, database_url=url, identity=identity, mint_token=mint_token, capture=capture,
            **pools)), proxy


def take_away(kind: str, proxy: object) -> None:
    if kind == "hung":
        proxy.freeze()  # type: ignore[attr-defined]
    else:
        set_reachable(str(proxy), False)


def bring_back(kind: str, proxy: object) -> None:
    if kind == "hung":
        proxy.thaw()  # type: ignore[attr-defined]
    else:
        set_reachable(str(proxy), True)


@pytest.mark.parametrize("kind", ["stopped", "hung"])
async def test_twenty_calls_are_recorded_whole_through_a_60_s_database_outage(
    kind: str, tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings,
    mint_token: MintToken, private_pg: tuple[str, str],
) -> None:
    name, url = private_pg
    calls = schedule()
    late = Call("late", STALE_CONSENTS_S + 5, STALE_CONSENTS_S + 7)
    async with outage_stack(kind, tmp_path, standin, identity_settings, mint_token, name, url) as (stack, proxy):
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 3.5  # the first calls start 3 s before the outage
        tasks = [asyncio.create_task(paced_call(stack, call, t0, i)) for i, call in enumerate(calls)]
        tasks.append(asyncio.create_task(paced_call(stack, late, t0, 99)))
        await asyncio.sleep(t0 - loop.time())
        take_away(kind, proxy)
        try:
            await asyncio.sleep(t0 + OUTAGE_S - loop.time())
        finally:
            bring_back(kind, proxy)
        await asyncio.gather(*tasks)
        rows = {c.request_id: await stack.recording(c.request_id, timeout=60) for c in calls}
        contents = {c.request_id: await stack.contents(c.request_id) for c in calls}
        ctx = stack.relay.app.state.ctx
        async with ctx.session_factory() as session:
            entries = (await session.execute(
                select(AuditEntryRow.request_id, AuditEntryRow.action)
                .where(AuditEntryRow.request_id.in_([c.request_id for c in [*calls, late]])))).all()
        late_rows = [r for r in await stack.recordings() if r.request_id == late.request_id]
        late_blobs = [o async for o in ctx.stores.store("westeurope").list_objects()
                      if o.request_id == late.request_id]
    outcomes = {c.name: (rows[c.request_id].state, rows[c.request_id].incomplete_reason) for c in calls}
    assert outcomes == {c.name: ("complete", None) for c in calls}
    for call in calls:
        found = contents[call.request_id]
        assert [f.payload for f in found.frames if f.direction == 0] == call.sent, call.name
        assert [f.payload for f in found.frames if f.direction == 1] == call.received, call.name
        assert found.gaps == [], call.name
        assert rows[call.request_id].frames == 2 * len(call.sent), call.name
    actions = {(rid, action) for rid, action in entries}
    for call in calls:
        assert (call.request_id, AuditAction.RECORDING_STARTED.value) in actions, call.name
        assert (call.request_id, AuditAction.RECORDING_SEALED_SUMMARY.value) in actions, call.name
        assert (call.request_id, AuditAction.RECORDING_INCOMPLETE.value) not in actions, call.name
    # Begun once the consent cache was stale: relayed whole, nothing of it stored anywhere (C1).
    assert late.sent
    assert late.received == late.sent
    assert (late_rows, late_blobs) == ([], [])
    assert not any(rid == late.request_id for rid, _ in entries)
