"""Who does a piece of scheduled work when several replicas run the scheduler (DESIGN.md, "Scale-out").

PostgreSQL: rows are claimed with `SELECT ... FOR UPDATE SKIP LOCKED` (recordings, KEK buckets), and a job
that has no rows to claim takes a transaction-level advisory lock named after it, held by a transaction
that lives as long as the run. A replica that dies drops its connection, and with it every claim: nothing
is held by a dead process. SQLite serves one process: a job runs once at a time in it, and a transaction
that must read what it then changes takes SQLite's write lock first (`take_write_lock`).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import Table, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.logs import get_logger
from app.retention.models import RetentionJobRun

log = get_logger("voicelog.scheduler")

_TRY_ADVISORY = text("SELECT pg_try_advisory_xact_lock(:key)")
JOB_RUNS: Final = cast(Table, RetentionJobRun.__table__)
# A write is the only way to take SQLite's writer lock in a deferred transaction; this one changes nothing.
_SQLITE_WRITE_LOCK = text("UPDATE retention_job_runs SET runs = runs WHERE job = :job")


def dialect_name(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def is_postgresql(session: AsyncSession) -> bool:
    return dialect_name(session) == "postgresql"


def advisory_key(name: str) -> int:
    """A stable signed 64-bit lock key for a job name (PostgreSQL advisory locks take a bigint)."""
    digest = hashlib.sha256(f"voicelog.scheduler/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.asynccontextmanager
async def exclusive_run(factory: async_sessionmaker[AsyncSession], name: str) -> AsyncIterator[bool]:
    """Hold job `name` for the body on PostgreSQL (False: another replica holds it). SQLite: always True."""
    async with factory() as session:
        if not is_postgresql(session):
            yield True
            return
        acquired = bool((await session.execute(_TRY_ADVISORY, {"key": advisory_key(name)})).scalar_one())
        try:
            yield acquired
        finally:
            try:
                await session.rollback()  # ends the transaction, which releases the lock
            except (DBAPIError, OSError) as exc:
                # The lock's connection is gone, and the server releases a lock with its session: the run
                # itself (done, recorded) must not turn into a failure for it. Anything else still raises.
                log.warning("scheduler.lock_release_failed", job=name, error=type(exc).__name__)


async def take_write_lock(session: AsyncSession) -> None:
    """SQLite: take the database's write lock now, so what this transaction reads next is what it changes.

    PostgreSQL needs nothing here: its claims are row locks taken by the reads themselves.
    """
    if not is_postgresql(session):
        await session.execute(_SQLITE_WRITE_LOCK, {"job": "retention.purge"})


def insert_ignoring_duplicates(session: AsyncSession, table: Table, values: dict[str, Any]) -> Any:
    """`INSERT ... ON CONFLICT DO NOTHING` for the session's database."""
    if is_postgresql(session):
        return postgresql.insert(table).values(values).on_conflict_do_nothing()
    return sqlite.insert(table).values(values).on_conflict_do_nothing()


async def record_job_run(
    session: AsyncSession, *, job: str, started_at: datetime, finished_at: datetime, ok: bool, items: int,
    duration_ms: int, error: str | None, owner: str,
) -> None:
    """Upsert the job's row in `retention_job_runs` (the caller commits)."""
    await session.execute(insert_ignoring_duplicates(session, JOB_RUNS, {
        "job": job, "last_duration_ms": 0, "last_items": 0, "runs": 0, "failures": 0,
    }))
    row = await session.get(RetentionJobRun, job, with_for_update=is_postgresql(session))
    assert row is not None  # noqa: S101 - inserted above
    row.last_started_at, row.last_finished_at, row.owner = started_at, finished_at, owner[:64]
    row.last_duration_ms, row.last_items, row.runs = min(duration_ms, 2**31 - 1), min(items, 2**31 - 1), row.runs + 1
    if ok:
        row.last_success_at = finished_at
    else:
        row.last_failure_at, row.last_error, row.failures = finished_at, (error or "error")[:128], row.failures + 1
    await session.flush()
