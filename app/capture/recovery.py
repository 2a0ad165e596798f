"""Crash recovery: recordings left `recording` by a replica that died are closed as incomplete."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.actions import Actor, AuditAction, Subjects
from app.audit.service import append_entry
from app.capture.models import Recording, RecordingState
from app.capture.states import IncompleteReason
from app.clock import Clock
from app.logs import get_logger
from app.storage.errors import StorageError
from app.storage.layout import RecordingKey
from app.storage.router import RegionRouter

log = get_logger("voicelog.capture")


async def close_stale_recordings(
    *,
    session_factory: async_sessionmaker[AsyncSession],
    clock: Clock,
    stores: RegionRouter,
    stale_after: timedelta,
    live: set[str],
    limit: int = 200,
) -> int:
    """Close recordings whose writer stopped heartbeating; the committed blob length is kept. Returns count.

    Rows are claimed with `FOR UPDATE SKIP LOCKED` on PostgreSQL so several replicas never close one twice.
    """
    now = clock.now()
    cutoff = now - stale_after
    closed = 0
    async with session_factory() as session:
        query = (
            select(Recording)
            .where(Recording.state == RecordingState.RECORDING,
                   or_(Recording.heartbeat_at < cutoff, Recording.heartbeat_at.is_(None)))
            .order_by(Recording.started_at)
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        for recording in (await session.execute(query)).scalars():
            if recording.request_id in live:
                continue
            try:
                length = await stores.store(recording.region).length(
                    RecordingKey(recording.request_id, recording.started_at))
            except StorageError:
                length = recording.bytes_committed  # the store is down: keep what we knew
            recording.state = RecordingState.INCOMPLETE
            recording.incomplete_reason = IncompleteReason.RELAY_RESTARTED
            recording.ended_at = _max(now, recording.started_at)
            recording.bytes_committed = length
            recording.owner = None
            await append_entry(session=session, clock=clock, actor=Actor.system("recovery"),
                               action=AuditAction.RECORDING_INCOMPLETE,
                               subjects=Subjects(request_id=recording.request_id),
                               detail={"reason": IncompleteReason.RELAY_RESTARTED})
            closed += 1
        await session.commit()
    if closed:
        log.warning("recording.recovered", recordings=closed)
    return closed


def _max(a: datetime, b: datetime) -> datetime:
    return a if a >= b else b
