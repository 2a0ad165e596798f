"""The chain keeper and the scheduled verifier, running as background tasks (C6)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from prometheus_client import CollectorRegistry
from sqlalchemy import event, func, select

from app.audit.checkpoints import list_checkpoints
from app.audit.jobs import ChainKeeper, VerifierJob
from app.audit.metrics import AuditMetrics
from app.audit.runtime import AuditRuntime
from app.audit.service import INBOX
from app.audit.settings import AuditSettings
from app.clock import ManualClock
from tests.audit import tamper
from tests.audit.scenario import append_step, example_steps
from tests.fixtures.audit import AuditDb, disable_audit_triggers


def _runtime(base: AuditRuntime, **settings: float) -> AuditRuntime:
    values = {**base.settings.model_dump(), **settings}
    return AuditRuntime(AuditSettings(**values), base.keyring, base.sink, AuditMetrics(CollectorRegistry()))


async def test_the_keeper_chains_signs_and_exports_in_the_background(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime
) -> None:
    runtime = _runtime(audit_runtime, sequencer_interval_s=0.02, sequencer_idle_s=0.1, checkpoint_every_entries=5)
    keeper = ChainKeeper(runtime, audit_db.factory, audit_clock)
    keeper.start()
    try:
        for n in range(3):
            async with audit_db.factory() as session:
                for step in example_steps(n, audit_clock.now()):
                    await append_step(session, audit_clock, step)
                await session.commit()
            audit_clock.advance(timedelta(seconds=30))
        for _ in range(1000):  # generous: shared CI machines are slow
            async with audit_db.factory() as session:
                pending = (await session.execute(select(func.count()).select_from(INBOX))).scalar_one()
                checkpoints = await list_checkpoints(session)
            if pending == 0 and checkpoints and len(await runtime.sink.read_all()) == len(checkpoints):
                break
            await asyncio.sleep(0.02)
    finally:
        await keeper.stop()
    # stop() runs one last round, which may sign a checkpoint that fell due meanwhile: compare with what
    # the database holds after the keeper stopped, not with the snapshot taken while it was running.
    async with audit_db.factory() as session:
        checkpoints = await list_checkpoints(session)
    assert pending == 0
    assert checkpoints
    assert await runtime.sink.read_all() == checkpoints
    assert runtime.metrics is not None
    assert runtime.metrics.checkpoints._value.get() == len(checkpoints)  # type: ignore[attr-defined]


async def test_the_keeper_survives_a_failing_database(audit_clock: ManualClock, audit_runtime: AuditRuntime) -> None:
    from app.db import create_engine, create_session_factory

    engine = create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    runtime = _runtime(audit_runtime, sequencer_interval_s=0.01)
    keeper = ChainKeeper(runtime, create_session_factory(engine), audit_clock)
    keeper.start()
    await asyncio.sleep(0.1)
    await keeper.stop()
    await engine.dispose()
    assert runtime.metrics is not None
    assert runtime.metrics.keeper_errors.labels(step="tick")._value.get() >= 1  # type: ignore[attr-defined]


async def test_the_scheduled_verifier_publishes_its_findings(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime
) -> None:
    runtime = _runtime(audit_runtime)
    keeper = ChainKeeper(runtime, audit_db.factory, audit_clock)
    async with audit_db.factory() as session:
        for step in example_steps(1, audit_clock.now()):
            await append_step(session, audit_clock, step)
        await session.commit()
    await keeper.tick(force=True)
    job = VerifierJob(runtime, audit_db.factory, audit_clock)
    assert (await job.run_once()).ok
    assert runtime.metrics is not None
    assert runtime.metrics.chain_ok._value.get() == 1  # type: ignore[attr-defined]
    assert runtime.metrics.sealed_through._value.get() == 10  # type: ignore[attr-defined]

    async with audit_db.factory() as session:
        await disable_audit_triggers(session)
        await tamper.swap(session, 2, 3)
        await session.commit()
    result = await job.run_once()
    assert result.damage is not None
    assert (result.damage.kind.value, result.damage.seq) == ("reordered", 2)
    assert runtime.metrics.chain_ok._value.get() == 0  # type: ignore[attr-defined]
    assert runtime.metrics.damage.labels(kind="reordered")._value.get() == 1  # type: ignore[attr-defined]


async def test_an_idle_keeper_only_peeks_at_the_inbox_until_something_is_queued(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime
) -> None:
    """Every replica polls: between full rounds a poll is one look at the inbox, not a chain round and an
    export. A queued entry (PostgreSQL) is still chained at the next poll, not the next full round."""
    statements: list[str] = []
    event.listen(audit_db.engine.sync_engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_: statements.append(statement))
    runtime = _runtime(audit_runtime, sequencer_interval_s=0.02, sequencer_idle_s=60)
    keeper = ChainKeeper(runtime, audit_db.factory, audit_clock)
    keeper.start()
    try:
        for _ in range(1000):  # the first full round is over once the first peek comes
            if any("EXISTS" in s for s in statements):
                break
            await asyncio.sleep(0.01)
        statements.clear()
        await asyncio.sleep(0.5)
        idle = list(statements)
        if audit_db.kind == "postgresql":  # SQLite chains each entry as it is written: nothing is queued
            await _append_committed(audit_db, audit_clock, 1)
            for _ in range(1000):
                if await _queued(audit_db) == 0:
                    break
                await asyncio.sleep(0.02)
            assert await _queued(audit_db) == 0  # chained by a poll, a minute before the next full round
    finally:
        await keeper.stop()
    peeks = [s for s in idle if "EXISTS" in s and "audit_inbox" in s]
    assert len(peeks) >= 5  # it kept polling
    assert not [s for s in idle if "audit_chain_head" in s or "audit_checkpoints" in s]


async def _queued(audit_db: AuditDb) -> int:
    async with audit_db.factory() as session:
        return int((await session.execute(select(func.count()).select_from(INBOX))).scalar_one())


async def _append_committed(audit_db: AuditDb, clock: ManualClock, n: int) -> None:
    async with audit_db.factory() as session:
        for step in example_steps(n, clock.now()):
            await append_step(session, clock, step)
        await session.commit()
