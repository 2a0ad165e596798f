"""The scheduler: jobs run at start and on their period, coalesced; replicas share; runs are metrics."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select, text

from app.capture.models import Recording
from app.config import Settings
from app.retention.cli import run_worker
from app.retention.jobs import DAILY_REPORT, ORPHAN_SWEEP, PURGE, JobContext, ScheduledJob
from app.retention.locks import exclusive_run
from app.retention.models import RetentionJobRun, RetentionReport
from app.retention.report import overdue_counts
from app.retention.scheduler import EPOCH, RetentionScheduler, build_scheduler
from app.retention.settings import RetentionSettings
from tests.retention.world import LIFETIME, REGIONS, World


async def job_runs(world: World) -> dict[str, RetentionJobRun]:
    async with world.factory() as session:
        return {r.job: r for r in (await session.execute(select(RetentionJobRun))).scalars()}


async def wait_for(condition: object, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


# Every period an hour: with the defaults (a minute) a test would cross a periodic run now and then.
HOURLY = {"purge_every_s": 3600, "pending_blobs_every_s": 3600, "audit_checkpoint_every_s": 3600,
          "audit_verify_every_s": 3600}


async def start_clear_of_the_grid(scheduler: RetentionScheduler, margin: timedelta = timedelta(seconds=25)) -> None:
    """Start where no periodic run falls within `margin`, so the only runs a test sees are the catch-up ones.

    APScheduler fires on the wall clock, not the test's clock: a test that happened to cross a grid point
    would see a second run, legitimately."""
    now = datetime.now(UTC)
    wait = timedelta(0)
    for job in scheduler.jobs:
        until_next = job.every - (now - (EPOCH + job.offset)) % job.every
        if until_next < margin:
            wait = max(wait, until_next + timedelta(seconds=1))
    await asyncio.sleep(wait.total_seconds())
    scheduler.start()


async def test_down_for_three_days_then_started_catches_up_at_once(world: World) -> None:
    epoch = world.clock.now()
    made = [await world.record(REGIONS[n % 2], epoch + timedelta(hours=5 * n, minutes=7)) for n in range(14)]
    # The process was down from day 30 on: nothing purged the buckets of days 0-3 when they came due.
    world.clock.advance(LIFETIME + timedelta(days=3))
    due = [r for r in made if r.bucket_start + LIFETIME <= world.clock.now()]
    assert len(due) == 14
    scheduler = world.scheduler(**HOURLY)
    await start_clear_of_the_grid(scheduler)
    try:
        async def caught_up() -> bool:
            runs = await job_runs(world)
            return all(name in runs and runs[name].runs >= 1 for name in (PURGE, DAILY_REPORT, ORPHAN_SWEEP))

        await wait_for(caught_up)
    finally:
        await scheduler.shutdown()
    runs = await job_runs(world)
    assert runs[PURGE].runs == 1  # one run, at start, did it all
    assert runs[PURGE].last_success_at == world.clock.now()
    assert await world.count(Recording.shredded_at.is_(None)) == 0
    assert await world.count(Recording.blob_deleted_at.is_(None)) == 0
    assert not await world.keyrings.live_buckets(started_before=world.clock.now())
    async with world.factory() as session:
        reports = {r.day: r for r in (await session.execute(select(RetentionReport))).scalars()}
    assert len(reports) == RetentionSettings().report_catch_up_days
    # The daily reports of the outage days say what happened: purges came late.
    late = sum(overdue_counts(json.loads(r.content))[0] for r in reports.values())
    assert late == sum(1 for r in made if (r.started_at + LIFETIME).date() <= max(reports))
    assert late >= 10
    assert not all(r.within_limit for r in reports.values())


async def test_jobs_start_at_once_then_run_aligned_and_coalesced(world: World) -> None:
    registry = CollectorRegistry()
    scheduler = world.scheduler(registry=registry, **HOURLY)
    await start_clear_of_the_grid(scheduler)
    try:
        jobs = {job.id: job for job in scheduler.apscheduler_jobs()}
        assert set(jobs) == {j.name for j in scheduler.jobs}
        for job in jobs.values():
            assert (job.coalesce, job.max_instances, job.misfire_grace_time) == (True, 1, None)

        async def all_ran() -> bool:
            runs = await job_runs(world)
            return all(name in runs for name in jobs)

        await wait_for(all_ran)
        await asyncio.sleep(0.1)
        purge_next = scheduler.next_run_times()[PURGE]
        assert purge_next is not None
        assert (purge_next.second, purge_next.microsecond) == (0, 0)  # on the minute, when bucket deadlines fall
    finally:
        await scheduler.shutdown()
    assert not scheduler.running
    for name in jobs:
        assert registry.get_sample_value("voicelog_scheduler_job_runs_total", {"job_name": name, "outcome": "ok"}) == 1
        assert registry.get_sample_value("voicelog_scheduler_job_duration_seconds_count", {"job_name": name}) == 1


async def test_an_exclusive_job_runs_on_one_replica_per_period(world: World) -> None:
    first, second = world.scheduler(), world.scheduler()
    assert (await first.run_job(ORPHAN_SWEEP)).outcome == "ok"
    assert (await second.run_job(ORPHAN_SWEEP)).outcome == "skipped"  # the other replica ran it this hour
    world.clock.advance(timedelta(minutes=30))
    assert (await second.run_job(ORPHAN_SWEEP)).outcome == "skipped"
    world.clock.advance(timedelta(minutes=30))
    assert (await second.run_job(ORPHAN_SWEEP)).outcome == "ok"
    if world.kind == "postgresql":  # while a replica holds the job, another skips it
        world.clock.advance(timedelta(hours=1))
        async with exclusive_run(world.factory, ORPHAN_SWEEP) as held:
            assert held
            skipped = await first.run_job(ORPHAN_SWEEP)
        assert (skipped.outcome, skipped.error) == ("skipped", "held_elsewhere")
        assert (await first.run_job(ORPHAN_SWEEP)).outcome == "ok"


async def test_failures_are_counted_recorded_and_never_stop_other_jobs(world: World) -> None:
    calls: list[str] = []

    async def expire_grants(ctx: JobContext) -> int:  # what the access domain will register
        calls.append(ctx.owner)
        return 3

    async def broken(_ctx: JobContext) -> int:
        raise RuntimeError("bug")

    registry = CollectorRegistry()
    scheduler = build_scheduler(
        settings=RetentionSettings(), lifetime=LIFETIME, session_factory=world.factory, clock=world.clock,
        keyrings=world.keyrings, stores=world.stores, audit=world.audit_runtime(), registry=registry,
        extra_jobs=[ScheduledJob("access.expire_grants", timedelta(minutes=1), expire_grants, exclusive=True),
                    ScheduledJob("test.broken", timedelta(minutes=1), broken)],
        owner="replica-a",
    )
    outcomes = {o.job: o for o in await scheduler.run_all()}
    assert outcomes["test.broken"].outcome == "failed"
    assert outcomes["access.expire_grants"].items == 3
    assert all(o.outcome == "ok" for name, o in outcomes.items() if name != "test.broken")
    assert calls == ["replica-a"]
    runs = await job_runs(world)
    assert (runs["test.broken"].failures, runs["test.broken"].last_error, runs["test.broken"].runs) == (
        1, "RuntimeError", 1)
    assert runs["access.expire_grants"].last_items == 3
    sample = registry.get_sample_value
    assert sample("voicelog_scheduler_job_runs_total", {"job_name": "test.broken", "outcome": "failed"}) == 1
    assert sample("voicelog_scheduler_job_failures_total", {"job_name": "test.broken", "error": "RuntimeError"}) == 1
    assert sample("voicelog_scheduler_job_items_total", {"job_name": "access.expire_grants"}) == 3
    with pytest.raises(ValueError, match="unique"):
        build_scheduler(settings=RetentionSettings(), lifetime=LIFETIME, session_factory=world.factory,
                        clock=world.clock, keyrings=world.keyrings, stores=world.stores, audit=world.audit_runtime(),
                        registry=CollectorRegistry(),
                        extra_jobs=[ScheduledJob(PURGE, timedelta(minutes=1), expire_grants)])


@pytest.mark.parametrize("db_kind", ["sqlite"])
async def test_voicelog_worker_runs_the_jobs_until_stopped(tmp_path: Path, db_kind: str) -> None:
    settings = Settings(data_dir=tmp_path / "data", standin_enabled=False, demo_resource=False)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop=stop))
    from app.db import create_engine, create_session_factory

    engine = create_engine(settings.resolved_database_url)
    try:
        async def ran() -> bool:
            if worker.done():
                worker.result()
            try:
                async with create_session_factory(engine)() as session:
                    names = set((await session.execute(select(RetentionJobRun.job))).scalars())
            except Exception:
                return False  # not migrated yet
            return {PURGE, DAILY_REPORT} <= names

        await wait_for(ran, timeout=60)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
        await engine.dispose()


async def test_a_process_that_runs_the_audit_keeper_itself_leaves_the_audit_jobs_out(world: World) -> None:
    scheduler = build_scheduler(settings=RetentionSettings(), lifetime=LIFETIME, session_factory=world.factory,
                                clock=world.clock, keyrings=world.keyrings, stores=world.stores,
                                audit=world.audit_runtime(), registry=CollectorRegistry(), audit_jobs=False)
    names = {job.name for job in scheduler.jobs}
    assert PURGE in names
    assert not names & {"audit.checkpoint", "audit.verify"}


async def test_a_database_outage_is_a_counted_failure_not_a_crash(world: World) -> None:
    registry = CollectorRegistry()
    scheduler = world.scheduler(registry=registry)
    await world.engine.dispose()
    broken = scheduler.context.session_factory

    def unreachable() -> object:
        raise ConnectionRefusedError("database down")

    scheduler.context.session_factory = unreachable  # type: ignore[assignment]
    try:
        outcome = await scheduler.run_job(ORPHAN_SWEEP)  # its replica lock cannot be taken
    finally:
        scheduler.context.session_factory = broken
    assert (outcome.outcome, outcome.error) == ("failed", "ConnectionRefusedError")
    sample = registry.get_sample_value
    assert sample("voicelog_scheduler_job_failures_total",
                  {"job_name": ORPHAN_SWEEP, "error": "ConnectionRefusedError"}) == 1


@pytest.mark.parametrize("db_kind", ["postgresql"])
async def test_a_good_run_whose_lock_connection_dies_is_still_a_good_run(world: World) -> None:
    """The replica lock's connection is cut while the job runs (a failover, a network blip). The work is
    done and recorded; the lock went with its connection. The run is ok, not a failure."""

    async def cut_the_lock_then_work(ctx: JobContext) -> int:
        async with ctx.session_factory() as session:
            holders = (await session.execute(text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ))).scalars().all()
            assert len(holders) == 1
            await session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": holders[0]})
            await session.commit()
            # The signal is asynchronous: wait until that backend has really gone. pg_stat_activity is read
            # once per transaction, so each look is its own transaction (polling in one never sees it go).
            deadline = time.monotonic() + 30
            while True:
                gone = (await session.execute(text("SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity "
                                                   "WHERE pid = :pid)"), {"pid": holders[0]})).scalar_one()
                await session.rollback()
                if gone or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.01)
            assert gone
        return 5

    registry = CollectorRegistry()
    scheduler = build_scheduler(
        settings=RetentionSettings(), lifetime=LIFETIME, session_factory=world.factory, clock=world.clock,
        keyrings=world.keyrings, stores=world.stores, audit=world.audit_runtime(), registry=registry,
        extra_jobs=[ScheduledJob("test.cut", timedelta(minutes=1), cut_the_lock_then_work, exclusive=True)],
    )
    outcome = await scheduler.run_job("test.cut")
    assert (outcome.outcome, outcome.items, outcome.error) == ("ok", 5, None)
    sample = registry.get_sample_value
    assert sample("voicelog_scheduler_job_runs_total", {"job_name": "test.cut", "outcome": "ok"}) == 1
    assert sample("voicelog_scheduler_job_runs_total", {"job_name": "test.cut", "outcome": "failed"}) == 0
    runs = await job_runs(world)
    assert (runs["test.cut"].runs, runs["test.cut"].failures, runs["test.cut"].last_items) == (1, 0, 5)
    # The lock went with its connection: the next period's run takes it (a held lock would be skipped).
    world.clock.advance(timedelta(minutes=1))
    assert (await scheduler.run_job("test.cut")).outcome == "ok"
