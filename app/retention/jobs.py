"""The scheduled jobs: what each does per run, and how often. The scheduler (scheduler.py) runs them.

A job is a `ScheduledJob`: a name, a period, an async function of a `JobContext` returning how many units
of work it did, and whether it is `exclusive` (one replica at a time, and at most once per period across
replicas). Other domains add theirs through `build_scheduler(extra_jobs=...)`, e.g. access:

    ScheduledJob("access.expire_grants", timedelta(minutes=1), expire_grants, exclusive=True)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.jobs import ChainKeeper, run_verification
from app.audit.reports.entries import Period
from app.audit.reports.service import ReportFormat
from app.audit.runtime import AuditRuntime
from app.capture.retention_service import count_blobs_pending
from app.capture.shred import delete_pending_blobs
from app.clock import Clock
from app.logs import get_logger
from app.retention.metrics import RetentionMetrics
from app.retention.orphans import OrphanSweep
from app.retention.purge import Purger
from app.retention.report import (
    chain_queued_entries,
    days_to_report,
    generate_retention_report,
    overdue_counts,
    stored_report,
)
from app.retention.settings import RetentionSettings
from app.storage.router import RegionRouter
from app.vault.keyring import RegionKeyrings

log = get_logger("voicelog.scheduler")

PURGE = "retention.purge"
PENDING_BLOBS = "retention.pending_blobs"
ORPHAN_SWEEP = "retention.orphan_sweep"
DAILY_REPORT = "retention.daily_report"
AUDIT_CHECKPOINT = "audit.checkpoint"
AUDIT_VERIFY = "audit.verify"


@dataclass
class JobContext:
    """What jobs work with; built once per scheduler. Jobs open their own sessions, one per unit of work."""

    session_factory: async_sessionmaker[AsyncSession]
    clock: Clock
    keyrings: RegionKeyrings
    stores: RegionRouter
    audit: AuditRuntime
    settings: RetentionSettings
    lifetime: timedelta
    metrics: RetentionMetrics
    owner: str
    purger: Purger = field(init=False)
    sweep: OrphanSweep = field(init=False)
    keeper: ChainKeeper = field(init=False)

    def __post_init__(self) -> None:
        self.purger = Purger(session_factory=self.session_factory, clock=self.clock, keyrings=self.keyrings,
                             stores=self.stores, settings=self.settings, lifetime=self.lifetime,
                             metrics=self.metrics, owner=self.owner)
        self.sweep = OrphanSweep(session_factory=self.session_factory, clock=self.clock, stores=self.stores,
                                 min_age=self.settings.orphan_min_age, lifetime=self.lifetime,
                                 metrics=self.metrics)
        self.keeper = ChainKeeper(self.audit, self.session_factory, self.clock)


JobFunction = Callable[[JobContext], Awaitable[int | None]]


@dataclass(frozen=True)
class ScheduledJob:
    """A job and its period. Runs fall on multiples of `every` since the epoch, plus `offset`."""

    name: str
    every: timedelta
    run: JobFunction
    exclusive: bool = False
    offset: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 64:
            raise ValueError("a job name is 1-64 characters")
        if self.every <= timedelta(0):
            raise ValueError("a job's period must be positive")


# --- the built-in jobs -----------------------------------------------------------------------------------


async def purge_due_buckets(ctx: JobContext) -> int:
    """C7: destroy keys, blobs and KEKs of every bucket at the end of its life."""
    return (await ctx.purger.run()).items


async def retry_pending_blobs(ctx: JobContext) -> int:
    """Blob deletes that failed after their key was destroyed ("blob pending"), again."""
    async with ctx.session_factory() as session:
        done = await delete_pending_blobs(session=session, clock=ctx.clock, stores=ctx.stores,
                                          limit=ctx.settings.pending_blobs_batch,
                                          concurrency=ctx.settings.blob_delete_concurrency)
        await session.commit()
    async with ctx.session_factory() as session:
        left = await count_blobs_pending(session=session)
    ctx.metrics.blobs_deleted.inc(done)
    ctx.metrics.blobs_pending.set(int(left))
    return done


async def sweep_orphans(ctx: JobContext) -> int:
    return (await ctx.sweep.run()).items


async def make_daily_reports(ctx: JobContext) -> int:
    """Sign and keep the report of every finished UTC day that has none (up to `report_catch_up_days` back),
    from the day the audit trail began: a fresh install signs nothing for the days before it existed."""
    now = ctx.clock.now()
    last = (now - timedelta(seconds=ctx.settings.report_delay_s)).astimezone(UTC).date() - timedelta(days=1)
    first = last - timedelta(days=ctx.settings.report_catch_up_days - 1)
    async with ctx.session_factory() as session:
        missing = await days_to_report(session, first=first, last=last)  # none before the audit trail began
    if not missing:
        return 0
    await chain_queued_entries(ctx.session_factory)
    for day in missing:
        async with ctx.session_factory() as session:
            output = await generate_retention_report(
                session=session, clock=ctx.clock, keyring=ctx.audit.keyring, period=Period(day, day),
                fmt=ReportFormat.JSON, retention_days=ctx.audit.settings.retention_days,
            )
            session.add(stored_report(day, output, ctx.clock.now()))
            await session.commit()
        recordings, buckets = overdue_counts(output.report)
        log.info("retention.report.signed", day=day.isoformat(), overdue_recordings=recordings,
                 overdue_kek_buckets=buckets)
    ctx.metrics.report_overdue.labels(kind="recordings").set(recordings)
    ctx.metrics.report_overdue.labels(kind="kek_buckets").set(buckets)
    ctx.metrics.report_last_day.set(datetime.combine(missing[-1], datetime.min.time(), tzinfo=UTC).timestamp())
    return len(missing)


async def audit_checkpoint(ctx: JobContext) -> int:
    """One round of the audit chain keeper: chain queued entries, sign a checkpoint if due, export it."""
    return (await ctx.keeper.tick()).chained


async def audit_verify(ctx: JobContext) -> int:
    """Verify the whole audit chain; the audit metrics carry the verdict."""
    result = await run_verification(session_factory=ctx.session_factory, runtime=ctx.audit, clock=ctx.clock)
    return result.entries_checked


def builtin_jobs(settings: RetentionSettings, audit: AuditRuntime) -> list[ScheduledJob]:
    verify_every = (timedelta(seconds=settings.audit_verify_every_s) if settings.audit_verify_every_s is not None
                    else timedelta(minutes=audit.settings.verify_every_minutes))
    return [
        ScheduledJob(PURGE, timedelta(seconds=settings.purge_every_s), purge_due_buckets),
        ScheduledJob(PENDING_BLOBS, timedelta(seconds=settings.pending_blobs_every_s), retry_pending_blobs,
                     offset=timedelta(seconds=30)),
        ScheduledJob(AUDIT_CHECKPOINT, timedelta(seconds=settings.audit_checkpoint_every_s), audit_checkpoint),
        ScheduledJob(ORPHAN_SWEEP, timedelta(seconds=settings.orphan_sweep_every_s), sweep_orphans,
                     exclusive=True, offset=timedelta(minutes=20)),
        ScheduledJob(DAILY_REPORT, timedelta(seconds=settings.report_every_s), make_daily_reports,
                     exclusive=True, offset=timedelta(minutes=15)),
        ScheduledJob(AUDIT_VERIFY, verify_every, audit_verify, exclusive=True, offset=timedelta(minutes=40)),
    ]
