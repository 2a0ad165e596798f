"""The chain keeper and the scheduled verifier, running as background tasks (C6)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import event, func, select

from app.audit.checkpoints import list_checkpoints
from app.audit.jobs import ChainKeeper, VerifierJob
from app.audit.metrics import AuditMetrics
from app.audit.runtime import AuditRuntime
from app.audit.service import INBOX, lock_chain_head
from app.audit.settings import AuditSettings
from app.clock import ManualClock
from app.transaction import discard_after_commit
from tests.audit import tamper
from tests.audit.scenario import append_step, example_steps
from tests.fixtures.audit import AuditDb, disable_audit_triggers


def _runtime(base: AuditRuntime, **settings: float) -> AuditRuntime:
    values = {**base.settings.model_dump(), **settings}
    return AuditRuntime(AuditSettings(**values), base.keyring, base.sink, AuditMetrics(CollectorRegistry()))


@contextlib.asynccontextmanager
async def running_keeper(audit_db: AuditDb, clock: ManualClock, runtime: AuditRuntime) -> AsyncIterator[None]:
    keeper = ChainKeeper(runtime, audit_db.factory, clock)
    keeper.start()
    try:
        yield
    finally:
        await keeper.stop()


async def test_the_keeper_chains_signs_and_exports_in_the_background(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime
) -> None:
    runtime = _runtime(audit_runtime, sequencer_interval_s=0.02, sequencer_idle_s=0.1, checkpoint_every_entries=5)
    async with running_keeper(audit_db, audit_clock, runtime):
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


QUIET = {"sequencer_idle_s": 60, "checkpoint_every_s": 60}  # no full round by time while a test watches


class StatementLog:
    """The statements sent through an engine, in order and timed (the keeper's and the test's own)."""

    def __init__(self, audit_db: AuditDb) -> None:
        self.statements: list[tuple[float, str]] = []
        event.listen(audit_db.engine.sync_engine, "before_cursor_execute",
                     lambda _c, _cur, statement, *_: self.statements.append((time.monotonic(), statement)))

    @staticmethod
    def is_peek(statement: str) -> bool:
        return "EXISTS" in statement and "audit_inbox" in statement

    @staticmethod
    def is_round(statement: str) -> bool:
        return "audit_chain_head" in statement or "audit_checkpoints" in statement

    def peeks(self) -> list[float]:
        return [at for at, statement in self.statements if self.is_peek(statement)]

    def rounds(self) -> list[float]:
        return [at for at, statement in self.statements if self.is_round(statement)]

    async def wait_for(self, what: Callable[[], list[float]], count: int) -> None:
        for _ in range(4000):
            if len(what()) >= count:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"saw {len(what())} of {count} statements")


async def test_an_idle_keeper_peeks_ever_more_slowly_and_only_on_postgresql(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime
) -> None:
    """Every replica polls for entries queued elsewhere: a peek is one look at the inbox, not a chain round,
    and while the inbox stays empty the peeks slow to `sequencer_quiet_poll_s`. SQLite chains each entry as
    it is written, so there nothing is polled at all."""
    log = StatementLog(audit_db)
    runtime = _runtime(audit_runtime, sequencer_interval_s=0.02, sequencer_quiet_poll_s=0.16, **QUIET)
    async with running_keeper(audit_db, audit_clock, runtime):
        await log.wait_for(log.rounds, 1)  # the first full round
        if audit_db.kind == "postgresql":
            await log.wait_for(log.peeks, 4)  # past the first quick peeks (0.02, 0.04, 0.08 s apart)
        else:
            await asyncio.sleep(0.3)  # the first round's export
        log.statements.clear()
        await asyncio.sleep(1.5)
        idle = list(log.statements)
    assert not [s for _, s in idle if StatementLog.is_round(s)]
    if audit_db.kind == "postgresql":
        peeks = [at for at, s in idle if StatementLog.is_peek(s)]
        assert len(peeks) >= 3  # it kept polling...
        assert min(b - a for a, b in itertools.pairwise(peeks)) >= 0.15  # ...every 0.16 s, not every 0.02 s
    else:
        assert idle == []


@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)  # SQLite chains at once: no inbox
async def test_an_entry_queued_elsewhere_is_chained_by_a_peek(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime
) -> None:
    """An entry whose commit woke no keeper here (another replica's, the CLI's) is found by the next peek; no full
    round is due for a minute."""
    log = StatementLog(audit_db)
    runtime = _runtime(audit_runtime, sequencer_interval_s=0.02, sequencer_quiet_poll_s=0.1, **QUIET)
    async with running_keeper(audit_db, audit_clock, runtime):
        await log.wait_for(log.peeks, 3)
        await _append_committed(audit_db, audit_clock, 1, wake=False)
        assert await _chained_within(audit_db, 10.0)


@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)  # SQLite chains at once: no inbox
async def test_an_entry_this_process_queued_wakes_a_quiet_keeper_at_its_commit(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime
) -> None:
    """The keeper has gone quiet (its next peek seconds away); an entry committed here is chained at once,
    before any peek could have found it."""
    log = StatementLog(audit_db)
    runtime = _runtime(audit_runtime, sequencer_interval_s=0.05, sequencer_quiet_poll_s=60, **QUIET)
    async with running_keeper(audit_db, audit_clock, runtime):
        await log.wait_for(log.peeks, 6)  # 0.1, 0.2, 0.4, 0.8, 1.6 s apart: the next one 3.2 s after this
        log.statements.clear()
        await _append_committed(audit_db, audit_clock, 1)
        assert await _chained_within(audit_db, 10.0)
        order = [s for _, s in log.statements]
    first_round = next(i for i, s in enumerate(order) if StatementLog.is_round(s))
    assert not [s for s in order[:first_round] if StatementLog.is_peek(s)]


@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)  # SQLite chains at once: no inbox
async def test_a_woken_round_that_finds_the_chain_locked_looks_again_soon(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime
) -> None:
    """A second replica holds the chain lock when our entry's commit wakes the keeper: that round chains
    nothing, and the keeper looks again at the quick interval rather than waiting out its quiet poll."""
    log = StatementLog(audit_db)
    runtime = _runtime(audit_runtime, sequencer_interval_s=0.05, sequencer_quiet_poll_s=60, **QUIET)
    async with running_keeper(audit_db, audit_clock, runtime):
        await log.wait_for(log.peeks, 6)  # quiet: the next peek is 3.2 s away, then 6.4 s
        async with audit_db.factory() as other_replica:
            assert await lock_chain_head(other_replica) is not None
            rounds = len(log.rounds())
            await _append_committed(audit_db, audit_clock, 1)
            await log.wait_for(log.rounds, rounds + 1)  # the woken round, refused the lock
            await asyncio.sleep(0.2)
            assert await _queued(audit_db) > 0  # the woken round chained nothing
            await other_replica.rollback()
        assert await _chained_within(audit_db, 2.5)  # not at the quiet poll, 3 s or more away


async def _chained_within(audit_db: AuditDb, seconds: float) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if await _queued(audit_db) == 0:
            return True
        await asyncio.sleep(0.02)
    return await _queued(audit_db) == 0


async def _queued(audit_db: AuditDb) -> int:
    async with audit_db.factory() as session:
        return int((await session.execute(select(func.count()).select_from(INBOX))).scalar_one())


async def _append_committed(audit_db: AuditDb, clock: ManualClock, n: int, *, wake: bool = True) -> None:
    """`wake=False`: as another replica would, commit without waking this process's keeper."""
    async with audit_db.factory() as session:
        for step in example_steps(n, clock.now()):
            await append_step(session, clock, step)
        if not wake:
            discard_after_commit(session)
        await session.commit()
