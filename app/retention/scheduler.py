"""The scheduler: APScheduler 3.x's AsyncIOScheduler running the jobs of jobs.py on every replica.

    scheduler = build_scheduler(settings=..., lifetime=..., session_factory=..., clock=..., keyrings=...,
                                stores=..., audit=..., registry=...)
    scheduler.start()            # in the lifespan, inside the running loop
    ...
    await scheduler.shutdown()   # lets running jobs finish (up to shutdown_timeout_s)

Triggers fire on the system clock (APScheduler's); every decision a job makes uses the injected Clock, so
tests call `run_job` (or the job functions) under a ManualClock. Every job runs once at start, so whatever
was missed while the process was down is caught up at once, and runs coalesce: a run late or still going
when the next is due is one run, never a pile of them. Replicas: jobs claim their work themselves (rows
with `FOR UPDATE SKIP LOCKED`); an `exclusive` job takes an advisory lock and skips when another replica
ran it within its period (`retention_job_runs`). Runs, durations and failures are Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.runtime import AuditRuntime
from app.clock import Clock
from app.logs import get_logger
from app.retention.jobs import AUDIT_CHECKPOINT, AUDIT_VERIFY, JobContext, ScheduledJob, builtin_jobs
from app.retention.locks import exclusive_run, record_job_run
from app.retention.metrics import JOB_OUTCOMES, RetentionMetrics
from app.retention.models import RetentionJobRun
from app.retention.settings import RetentionSettings
from app.storage.router import RegionRouter
from app.vault.keyring import RegionKeyrings

log = get_logger("voicelog.scheduler")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CATCH_UP = ":catch-up"
AUDIT_JOBS = frozenset({AUDIT_CHECKPOINT, AUDIT_VERIFY})


@dataclass(frozen=True)
class JobOutcome:
    job: str
    outcome: str  # "ok", "failed" or "skipped"
    items: int = 0
    error: str | None = None


class RetentionScheduler:
    """The process's scheduled jobs. Build with `build_scheduler`."""

    def __init__(self, *, context: JobContext, jobs: Sequence[ScheduledJob],
                 tracer: trace.Tracer | None = None) -> None:
        names = [job.name for job in jobs]
        if len(set(names)) != len(names):
            raise ValueError("scheduled job names must be unique")
        self.context = context
        self.tracer = tracer or trace.NoOpTracer()
        self._jobs = {job.name: job for job in jobs}
        self._local = {job.name: asyncio.Lock() for job in jobs}
        self._running: set[asyncio.Task[Any]] = set()
        self._scheduler = AsyncIOScheduler(
            timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        for job in jobs:
            metrics = context.metrics
            metrics.job_duration.labels(job_name=job.name)
            for outcome in JOB_OUTCOMES:  # series exist from the start, so rates and alerts see zeros
                metrics.job_runs.labels(job_name=job.name, outcome=outcome)

    @property
    def jobs(self) -> list[ScheduledJob]:
        return list(self._jobs.values())

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def next_run_times(self) -> dict[str, datetime | None]:
        """When APScheduler fires each job next (system clock); None while paused or not started."""
        return {job.id: job.next_run_time for job in self._scheduler.get_jobs() if job.id in self._jobs}

    def apscheduler_jobs(self) -> list[Any]:
        """The underlying periodic APScheduler jobs (trigger, coalesce, max_instances, misfire grace time)."""
        return [job for job in self._scheduler.get_jobs() if job.id in self._jobs]

    def start(self, *, catch_up: bool = True) -> None:
        """Schedule every job and start; with `catch_up` each job also runs once right away.

        The catch-up run is a one-off job of its own, so the periodic runs stay on their grid (an interval
        job moved to "now" would keep that phase).
        """
        for job in self._jobs.values():
            trigger = IntervalTrigger(seconds=job.every.total_seconds(), start_date=EPOCH + job.offset, timezone=UTC)
            self._scheduler.add_job(self.run_job, trigger, args=[job.name], id=job.name, name=job.name,
                                    replace_existing=True)
            if catch_up:
                self._scheduler.add_job(self.run_job, DateTrigger(timezone=UTC), args=[job.name],
                                        id=f"{job.name}{CATCH_UP}", name=f"{job.name}{CATCH_UP}",
                                        replace_existing=True)
        self._scheduler.start()
        log.info("scheduler.started", jobs=sorted(self._jobs), owner=self.context.owner)

    async def shutdown(self) -> None:
        """Stop firing, let running jobs finish within `shutdown_timeout_s`, cancel what is left."""
        if self._scheduler.running:
            self._scheduler.pause()
        running = {t for t in self._running if not t.done() and t is not asyncio.current_task()}
        if running:
            _, late = await asyncio.wait(running, timeout=self.context.settings.shutdown_timeout_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
                log.warning("scheduler.jobs_cancelled", jobs=len(late))
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
            await asyncio.sleep(0)  # AsyncIOScheduler stops on the loop's next turn
        log.info("scheduler.stopped")

    async def run_job(self, name: str) -> JobOutcome:
        """Run one job now, as the scheduler does: local and replica exclusivity, bookkeeping, metrics."""
        job = self._jobs[name]
        local = self._local[name]
        if local.locked():
            return self._skipped(job, "running")
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            async with local:
                if not job.exclusive:
                    return await self._run(job)  # the job claims its own work, row by row
                async with exclusive_run(self.context.session_factory, job.name) as acquired:
                    if not acquired:
                        return self._skipped(job, "held_elsewhere")
                    if await self._ran_recently(job):
                        return self._skipped(job, "ran_recently")
                    return await self._run(job)
        except Exception as exc:  # the lock or the bookkeeping failed (database down): a failed run, counted
            error = type(exc).__name__
            self.context.metrics.job_runs.labels(job_name=job.name, outcome="failed").inc()
            self.context.metrics.job_failures.labels(job_name=job.name, error=error).inc()
            log.error("scheduler.job_failed", job=job.name, error=error)
            return JobOutcome(job.name, "failed", error=error)
        finally:
            if task is not None:
                self._running.discard(task)

    async def run_all(self) -> list[JobOutcome]:
        """Every job once, one after the other (the CLI, tests)."""
        return [await self.run_job(name) for name in self._jobs]

    # --- internals ------------------------------------------------------------------------------------

    async def _run(self, job: ScheduledJob) -> JobOutcome:
        """A run that got past the locks, as one span (a new trace: a job has no caller)."""
        with self.tracer.start_as_current_span("scheduler.job", context=trace.set_span_in_context(trace.INVALID_SPAN),
                                               attributes={"voicelog.job": job.name}, record_exception=False,
                                               set_status_on_exception=False) as span:
            outcome = await self._run_untraced(job)
            span.set_attributes({"voicelog.job.outcome": outcome.outcome, "voicelog.job.items": outcome.items})
            if outcome.error is not None:
                span.set_attribute("error.type", outcome.error)
                span.set_status(Status(StatusCode.ERROR))
            return outcome

    async def _run_untraced(self, job: ScheduledJob) -> JobOutcome:
        ctx = self.context
        started_at = ctx.clock.now()
        t0 = time.perf_counter()
        try:
            items = int(await job.run(ctx) or 0)
        except Exception as exc:
            duration = time.perf_counter() - t0
            error = type(exc).__name__
            ctx.metrics.job_runs.labels(job_name=job.name, outcome="failed").inc()
            ctx.metrics.job_failures.labels(job_name=job.name, error=error).inc()
            ctx.metrics.job_duration.labels(job_name=job.name).observe(duration)
            log.error("scheduler.job_failed", job=job.name, error=error, seconds=round(duration, 3))
            await self._record(job, started_at, ok=False, items=0, duration=duration, error=error)
            return JobOutcome(job.name, "failed", error=error)
        duration = time.perf_counter() - t0
        ctx.metrics.job_runs.labels(job_name=job.name, outcome="ok").inc()
        ctx.metrics.job_duration.labels(job_name=job.name).observe(duration)
        ctx.metrics.job_items.labels(job_name=job.name).inc(items)
        ctx.metrics.job_last_success.labels(job_name=job.name).set(ctx.clock.now().timestamp())
        await self._record(job, started_at, ok=True, items=items, duration=duration, error=None)
        return JobOutcome(job.name, "ok", items=items)

    def _skipped(self, job: ScheduledJob, why: str) -> JobOutcome:
        self.context.metrics.job_runs.labels(job_name=job.name, outcome="skipped").inc()
        log.debug("scheduler.job_skipped", job=job.name, why=why)
        return JobOutcome(job.name, "skipped", error=why)

    async def _ran_recently(self, job: ScheduledJob) -> bool:
        """Whether any replica finished this job within its period (less a tenth: triggers fire a bit apart)."""
        async with self.context.session_factory() as session:
            last = (await session.execute(
                select(RetentionJobRun.last_success_at).where(RetentionJobRun.job == job.name)
            )).scalar_one_or_none()
        slack = min(job.every / 10, timedelta(minutes=5))
        return last is not None and self.context.clock.now() - last < job.every - slack

    async def _record(self, job: ScheduledJob, started_at: datetime, *, ok: bool, items: int, duration: float,
                      error: str | None) -> None:
        try:
            async with self.context.session_factory() as session:
                await record_job_run(session, job=job.name, started_at=started_at,
                                     finished_at=self.context.clock.now(), ok=ok, items=items,
                                     duration_ms=int(duration * 1000), error=error, owner=self.context.owner)
                await session.commit()
        except Exception as exc:  # bookkeeping must not turn a run into a failure, nor stop the scheduler
            log.warning("scheduler.record_failed", job=job.name, error=type(exc).__name__)


def default_owner() -> str:
    """This replica's name in claims and job runs: host and process."""
    return f"{os.uname().nodename}-{os.getpid()}"[:64]


def build_scheduler(
    *,
    settings: RetentionSettings,
    lifetime: timedelta,
    session_factory: async_sessionmaker[AsyncSession],
    clock: Clock,
    keyrings: RegionKeyrings,
    stores: RegionRouter,
    audit: AuditRuntime,
    registry: CollectorRegistry,
    extra_jobs: Sequence[ScheduledJob] = (),
    owner: str | None = None,
    audit_jobs: bool = True,
    tracer: trace.Tracer | None = None,
) -> RetentionScheduler:
    """The scheduler with the built-in jobs and `extra_jobs` (e.g. access grants expiring).

    `audit_jobs=False` leaves out the audit checkpoint and verify jobs, for a process that already runs
    the audit's own ChainKeeper and VerifierJob.

    `lifetime` is the vault's bucket lifetime (`settings.vault.bucket_lifetime`); the report's limit is the
    audit's `retention_days`, and the two must agree (a mismatch is logged).
    """
    if audit.settings.retention_days * 24 * 3600 != int(lifetime.total_seconds()):
        log.warning("retention.lifetime_mismatch", vault_hours=lifetime.total_seconds() / 3600,
                    audit_days=audit.settings.retention_days)
    context = JobContext(session_factory=session_factory, clock=clock, keyrings=keyrings, stores=stores, audit=audit,
                         settings=settings, lifetime=lifetime, metrics=RetentionMetrics(registry),
                         owner=owner or default_owner())
    jobs = [job for job in builtin_jobs(settings, audit) if audit_jobs or job.name not in AUDIT_JOBS]
    return RetentionScheduler(context=context, jobs=[*jobs, *extra_jobs], tracer=tracer)
