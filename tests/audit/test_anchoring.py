"""The tail is anchored outside the database within seconds (C6): cadence, sinks, truncation, unanchored tail.

An attacker who can switch the triggers off (the table owner, a superuser) deletes the newest entries, moves
the head row back and deletes the checkpoints that covered them: the checkpoints anchored in the file or in
the append blob still name the lost head, and the verifier reports the cut.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from app.audit import blob_sink
from app.audit.blob_sink import AzureBlobCheckpointSink
from app.audit.checkpoints import CheckpointSink, FileCheckpointSink, list_checkpoints
from app.audit.jobs import ChainKeeper, publish, run_verification
from app.audit.metrics import AuditMetrics
from app.audit.runtime import AuditRuntime, build_checkpoint_sink
from app.audit.schemas import VerificationOut
from app.audit.service import integrate_pending, read_chain_head
from app.audit.settings import AuditSettings
from app.audit.verifier import DamageKind
from app.clock import ManualClock, SystemClock
from tests.audit import tamper
from tests.audit.scenario import append_step, example_steps
from tests.fixtures.audit import AuditDb, disable_audit_triggers
from tests.fixtures.blob import AzuriteRegions


def _runtime(base: AuditRuntime, sink: CheckpointSink | None = None, **settings: object) -> AuditRuntime:
    values = {**base.settings.model_dump(), **settings}
    return AuditRuntime(AuditSettings(**values), base.keyring, sink or base.sink, AuditMetrics(CollectorRegistry()),
                        mac_keys=base.mac_keys)


async def _append(db: AuditDb, clock: ManualClock | SystemClock, n: int, *, gap: timedelta = timedelta(0)) -> None:
    async with db.factory() as session:
        for step in example_steps(n, clock.now()):
            await append_step(session, clock, step)  # type: ignore[arg-type]
            if isinstance(clock, ManualClock):
                clock.advance(gap)
        await session.commit()


async def _blob_sink(azurite: AzuriteRegions) -> AzureBlobCheckpointSink:
    server = next(iter(azurite.servers.values()))
    if not server.running:
        server.start()
    settings = AuditSettings(checkpoint_sink="azure", checkpoint_blob_connection_string=server.connection_string,
                             checkpoint_blob_container=f"cp{secrets.token_hex(6)}")
    sink = build_checkpoint_sink(settings, Path("/nonexistent"))
    assert isinstance(sink, AzureBlobCheckpointSink)
    await sink.create_container()
    return sink


@pytest.fixture
async def blob_checkpoints(azurite: AzuriteRegions) -> AsyncIterator[AzureBlobCheckpointSink]:
    sink = await _blob_sink(azurite)
    try:
        yield sink
    finally:
        await sink.close()


@pytest.fixture(params=["file", "azure"])
async def anchor_sink(request: pytest.FixtureRequest, audit_runtime: AuditRuntime) -> AsyncIterator[CheckpointSink]:
    """Where checkpoints are anchored: the append-only file (embedded) or append blobs on Azurite."""
    if request.param == "file":
        yield audit_runtime.sink
        return
    sink = await _blob_sink(request.getfixturevalue("azurite"))
    try:
        yield sink
    finally:
        await sink.close()


def test_the_default_cadence_is_seconds_and_the_minutes_spelling_still_works() -> None:
    assert AuditSettings().checkpoint_interval_s == 5
    assert AuditSettings(checkpoint_every_minutes=2).checkpoint_interval_s == 120
    with pytest.raises(ValueError, match="not both"):
        AuditSettings(checkpoint_every_s=3, checkpoint_every_minutes=2)


async def test_with_the_default_settings_a_checkpoint_is_anchored_seconds_after_entries_arrive(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime
) -> None:
    keeper = ChainKeeper(audit_runtime, audit_db.factory, audit_clock)
    await _append(audit_db, audit_clock, 0)
    assert (await keeper.tick()).checkpoint is not None  # the first comes at once
    await _append(audit_db, audit_clock, 1)  # a few entries, far fewer than checkpoint_every_entries
    audit_clock.advance(timedelta(seconds=3))
    assert (await keeper.tick()).checkpoint is None  # 3 s < 5 s
    audit_clock.advance(timedelta(seconds=2))
    second = (await keeper.tick()).checkpoint
    assert second is not None
    async with audit_db.factory() as session:
        assert second.head_seq == (await read_chain_head(session)).seq
    assert (await audit_runtime.sink.read_all())[-1] == second  # anchored, not only stored


async def test_the_running_keeper_anchors_within_the_cadence_and_signs_nothing_while_idle(
    audit_db: AuditDb, audit_runtime: AuditRuntime
) -> None:
    """A full round comes when a checkpoint falls due, not only every sequencer_idle_s (here 60 s); the
    keeper's own checkpoint entries never make another one due."""
    clock = SystemClock()
    runtime = _runtime(audit_runtime, sequencer_interval_s=0.02, sequencer_idle_s=60, checkpoint_every_s=0.5)
    keeper = ChainKeeper(runtime, audit_db.factory, clock)
    keeper.start()
    try:
        await _append(audit_db, clock, 0)
        await _wait_anchored(audit_db, runtime, timeout_s=20)
        await _append(audit_db, clock, 1)
        began = time.monotonic()
        await _wait_anchored(audit_db, runtime, timeout_s=20)
        anchored_after = time.monotonic() - began
        count = len(await runtime.sink.read_all())
        await asyncio.sleep(1.5)  # three cadences of idling
        assert len(await runtime.sink.read_all()) == count
    finally:
        await keeper.stop()
    assert anchored_after < 10  # within the cadence (0.5 s) give or take a slow machine; never the 60 s idle


async def _wait_anchored(db: AuditDb, runtime: AuditRuntime, timeout_s: float) -> None:
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        async with db.factory() as session:
            head = await read_chain_head(session)
        exported = await runtime.sink.read_all()
        if exported and exported[-1].head_seq == head.seq and not await ChainKeeper(
                runtime, db.factory, SystemClock()).queued():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the head was not anchored in time")


async def test_a_tail_cut_past_an_anchored_checkpoint_is_found_even_with_head_and_checkpoints_covered_up(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime, anchor_sink: CheckpointSink,
) -> None:
    sink = anchor_sink
    runtime = _runtime(audit_runtime, sink)
    keeper = ChainKeeper(runtime, audit_db.factory, audit_clock)
    await _append(audit_db, audit_clock, 0)
    first = (await keeper.tick()).checkpoint
    assert first is not None
    await _append(audit_db, audit_clock, 1, gap=timedelta(seconds=1))  # 8 s of activity
    second = (await keeper.tick()).checkpoint
    assert second is not None  # default cadence: sealed and anchored seconds later
    assert [c.number for c in await sink.read_all()] == [1, 2]

    keep = first.head_seq + 2
    async with audit_db.factory() as session:
        await disable_audit_triggers(session)
        await tamper.truncate(session, keep, rewind_head=True, drop_checkpoints=True)
        await session.commit()
    async with audit_db.factory() as session:
        assert [c.number for c in await list_checkpoints(session)] == [1]  # the database alone looks intact

    result = await run_verification(session_factory=audit_db.factory, runtime=runtime, clock=audit_clock)
    assert result.damage is not None
    assert (result.damage.kind, result.damage.seq) == (DamageKind.TAIL_TRUNCATED, keep + 1)


async def test_the_unanchored_tail_is_reported_in_entries_and_seconds(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime
) -> None:
    keeper = ChainKeeper(audit_runtime, audit_db.factory, audit_clock)
    await _append(audit_db, audit_clock, 0)
    anchored = (await keeper.tick()).checkpoint
    assert anchored is not None
    result = await run_verification(session_factory=audit_db.factory, runtime=audit_runtime, clock=audit_clock)
    assert (result.anchored_through, result.unanchored_entries, result.unanchored_s) == (anchored.head_seq, 0, None)

    audit_clock.advance(timedelta(seconds=1))
    oldest = audit_clock.now()
    await _append(audit_db, audit_clock, 1, gap=timedelta(seconds=1))
    if audit_db.kind == "postgresql":  # half chained, half still queued: both are unanchored
        async with audit_db.factory() as session:
            await integrate_pending(session, wait=True, limit=4)
            await session.commit()
    audit_clock.advance(timedelta(seconds=30))
    result = await run_verification(session_factory=audit_db.factory, runtime=audit_runtime, clock=audit_clock)
    assert result.ok, result.damage
    assert result.anchored_through == anchored.head_seq
    assert result.unanchored_entries == 8
    assert result.unanchored_s == (audit_clock.now() - oldest).total_seconds() == 38
    body = VerificationOut.model_validate(result.to_json())  # what GET /audit/verify answers
    assert (body.unanchored_entries, body.unanchored_s, body.macs) == (8, 38, "checked")
    assert audit_runtime.metrics is None
    metrics = AuditMetrics(CollectorRegistry())
    publish(metrics, result)
    assert metrics.unanchored_entries._value.get() == 8  # type: ignore[attr-defined]
    assert metrics.unanchored_seconds._value.get() == 38  # type: ignore[attr-defined]


async def test_the_blob_sink_appends_each_checkpoint_once_across_replicas_and_rolls_over(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime,
    blob_checkpoints: AzureBlobCheckpointSink, monkeypatch: pytest.MonkeyPatch, azurite: AzuriteRegions,
) -> None:
    monkeypatch.setattr(blob_sink, "PER_BLOB", 3)
    runtime = _runtime(audit_runtime, blob_checkpoints, checkpoint_every_entries=1)
    keeper = ChainKeeper(runtime, audit_db.factory, audit_clock)
    for n in range(7):
        await _append(audit_db, audit_clock, n)
        await keeper.tick()
    async with audit_db.factory() as session:
        stored = await list_checkpoints(session)
    assert len(stored) == 7
    # Two more replicas' sinks (fresh caches) export the same checkpoints at once: nothing lands twice.
    server = next(iter(azurite.servers.values()))
    settings = AuditSettings(checkpoint_sink="azure", checkpoint_blob_connection_string=server.connection_string,
                             checkpoint_blob_container=runtime.settings.checkpoint_blob_container)
    others = [AzureBlobCheckpointSink.from_settings(settings.model_copy(update={
        "checkpoint_blob_container": blob_checkpoints._container.container_name})) for _ in range(2)]
    try:
        assert sum(await asyncio.gather(*(o.append(stored) for o in others))) == 0
        assert await blob_checkpoints.read_all() == stored
        assert await others[0].last_number() == 7
        names = await blob_checkpoints._names()
        assert names == [f"checkpoints/{n:012d}.jsonl" for n in (1, 4, 7)]
    finally:
        for other in others:
            await other.close()


async def test_the_file_sink_finds_its_last_checkpoint_from_the_tail(tmp_path: Path,
                                                                     audit_runtime: AuditRuntime) -> None:
    sink = FileCheckpointSink(tmp_path / "cp.jsonl")
    assert await sink.last_number() == 0
    sink.path.write_text("x" * 20_000 + "\n")  # a long first line the tail read cuts
    with sink.path.open("a") as handle:
        handle.write('{"number": 41, "head_seq": 1, "head_hash": "", "signed_at": "", "key_id": "", '
                     '"prev_signature": "", "signature": ""}\n{"number": 42')  # and a torn last line
    assert await sink.last_number() == 41
    assert audit_runtime.sink is not None
