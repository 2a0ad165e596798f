"""The chain keeper and the scheduled verifier, running as background tasks (C6)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

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
from tests.fixtures.database import PG_HOST, PG_PORT, PG_USER


def _runtime(base: AuditRuntime, **settings: float) -> AuditRuntime:
    values = {**base.settings.model_dump(), **settings}
    return AuditRuntime(AuditSettings(**values), base.keyring, base.sink, AuditMetrics(CollectorRegistry()))


async def test_the_keeper_chains_signs_and_exports_in_the_background(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime
) -> None:
    runtime = _runtime(audit_runtime, sequencer_interval_s=0.02, checkpoint_every_entries=5)
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


async def _queued(audit_db: AuditDb) -> int:
    async with audit_db.factory() as session:
        return int((await session.execute(select(func.count()).select_from(INBOX))).scalar_one())


async def _append_committed(audit_db: AuditDb, clock: ManualClock, n: int) -> None:
    async with audit_db.factory() as session:
        for step in example_steps(n, clock.now()):
            await append_step(session, clock, step)
        await session.commit()


async def _until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("db_kind", ["postgresql"])
async def test_a_queued_entry_wakes_the_keeper_at_once_instead_of_its_next_poll(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime
) -> None:
    """Polls a minute apart: only the inbox's notification can get the entries chained within the wait."""
    runtime = _runtime(audit_runtime, sequencer_interval_s=60, sequencer_idle_s=60)
    keeper = ChainKeeper(runtime, audit_db.factory, audit_clock)
    keeper.start()
    try:
        assert keeper.wakeups is not None
        wakeups = keeper.wakeups
        await _until(lambda: _true(wakeups.listening), "the keeper listens")
        await asyncio.sleep(0.2)  # its first round is over; the next poll is a minute away
        await _append_committed(audit_db, audit_clock, 2)
        await _until(lambda: _zero(_queued(audit_db)), "the queued entries are chained")
    finally:
        await keeper.stop()
    assert not wakeups.listening  # stopped: the listening connection is closed, not left in the pool


@pytest.mark.parametrize("db_kind", ["postgresql"])
async def test_a_lost_listening_connection_falls_back_to_polling_then_listens_again(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime
) -> None:
    runtime = _runtime(audit_runtime, sequencer_interval_s=0.05, sequencer_idle_s=60, sequencer_listen_retry_s=0.5)
    keeper = ChainKeeper(runtime, audit_db.factory, audit_clock)
    keeper.start()
    try:
        assert keeper.wakeups is not None
        wakeups = keeper.wakeups
        await _until(lambda: _true(wakeups.listening), "the keeper listens")
        lost = wakeups.backend_pid
        with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres",
                             autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (lost,)).fetchone() == (True,)
        await _append_committed(audit_db, audit_clock, 1)  # queued while nobody listens
        await _until(lambda: _zero(_queued(audit_db)), "the keeper, polling, chains what was queued")
        await _until(lambda: _true(wakeups.listening and wakeups.backend_pid != lost), "it listens again")
        await asyncio.sleep(0.2)  # listening again: polls are a minute apart from here on
        await _append_committed(audit_db, audit_clock, 2)
        await _until(lambda: _zero(_queued(audit_db)), "the new listener's notification gets them chained")
    finally:
        await keeper.stop()


async def _true(value: bool) -> bool:
    return value


async def _zero(count: Awaitable[int]) -> bool:
    return await count == 0
