"""Capture's service to the retention domain (C7): the reads, row claims and marks of recordings that the
purge, the pending-blob retry, the orphan sweep and the retention report need, one function per statement.

Beside `service.py`, not in it: erasure there calls `shred.py`, which calls these, so one module would be an
import loop. A claim is `FOR UPDATE SKIP LOCKED` on PostgreSQL (replicas take different rows);
the rows stay locked by the caller's session until it commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Select, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.capture.models import Recording, RecordingState
from app.capture.states import ShredReason

if TYPE_CHECKING:
    from app.capture.service import RecordingRow


@dataclass(frozen=True)
class RecordingBlobState:
    """What the orphan sweep needs of a row to judge a stored blob."""

    request_id: str
    blob_name: str
    started_at: datetime
    state: str
    shredded: bool
    blob_deleted: bool


def unpurged_buckets(*, started_by: datetime) -> Select[str, datetime]:
    """(region, bucket_start) of recordings whose key or blob is still there, started by `started_by`: a
    statement for the caller to combine (the purge unions it with its own buckets, one query)."""
    return select(Recording.region, Recording.bucket_start).where(
        Recording.blob_deleted_at.is_(None), Recording.shredded_at.is_(None), Recording.bucket_start <= started_by,
    ).distinct()


async def unshredded_page(
    *, session: AsyncSession, region: str, bucket_start: datetime, after: tuple[datetime, str] | None, limit: int,
) -> list[RecordingRow]:
    """The next `limit` rows of a bucket not yet shredded, in (started_at, request_id) order after `after`."""
    query = select(Recording).where(
        Recording.region == region, Recording.bucket_start == bucket_start, Recording.shredded_at.is_(None),
    ).order_by(Recording.started_at, Recording.request_id).limit(limit)
    if after is not None:
        query = query.where(tuple_(Recording.started_at, Recording.request_id) > tuple_(*after))
    return list((await session.execute(query)).scalars())


async def claim_unshredded(*, session: AsyncSession, request_ids: list[str]) -> list[RecordingRow]:
    """Those of `request_ids` not yet shredded, claimed for the caller's transaction."""
    query = select(Recording).where(Recording.request_id.in_(request_ids), Recording.shredded_at.is_(None))
    return list((await session.execute(_claiming(session, query))).scalars())


async def claim_blobs_pending(*, session: AsyncSession, request_ids: list[str]) -> list[RecordingRow]:
    """Those of `request_ids` shredded whose blob is not deleted yet, claimed for the caller's transaction."""
    query = select(Recording).where(
        Recording.request_id.in_(request_ids), Recording.blob_deleted_at.is_(None), Recording.shredded_at.is_not(None),
    )
    return list((await session.execute(_claiming(session, query))).scalars())


async def claim_oldest_blobs_pending(*, session: AsyncSession, limit: int) -> list[RecordingRow]:
    """Up to `limit` shredded rows whose blob is not deleted yet, longest shredded first, claimed."""
    query = (
        select(Recording).where(Recording.shredded_at.is_not(None), Recording.blob_deleted_at.is_(None))
        .order_by(Recording.shredded_at).limit(limit)
    )
    return list((await session.execute(_claiming(session, query))).scalars())


async def count_unshredded(*, session: AsyncSession, region: str, bucket_start: datetime) -> int:
    """How many rows of a bucket are not shredded yet."""
    return int((await session.execute(select(func.count()).select_from(Recording).where(
        Recording.region == region, Recording.bucket_start == bucket_start, Recording.shredded_at.is_(None),
    ))).scalar_one())


async def count_blobs_pending(*, session: AsyncSession) -> int:
    """How many shredded rows still have their blob ("blob pending")."""
    return int((await session.execute(select(func.count()).select_from(Recording).where(
        Recording.shredded_at.is_not(None), Recording.blob_deleted_at.is_(None)))).scalar_one())


async def blobs_pending_shredded_between(
    *, session: AsyncSession, start: datetime, end: datetime,
) -> list[tuple[str, str, datetime, ShredReason | None]]:
    """(request_id, region, shredded_at, reason) of rows shredded in [start, end) whose blob is still there."""
    found = await session.execute(
        select(Recording.request_id, Recording.region, Recording.shredded_at, Recording.shred_reason)
        .where(Recording.blob_deleted_at.is_(None), Recording.shredded_at.is_not(None),
               Recording.shredded_at >= start, Recording.shredded_at < end)
        .order_by(Recording.shredded_at, Recording.request_id)
    )
    return [(str(r[0]), str(r[1]), r[2], r[3]) for r in found if r[2] is not None]


async def hours_with_live_rows(*, session: AsyncSession, region: str, started_before: datetime) -> list[datetime]:
    """The bucket hours, in order, of a region's rows neither shredded nor blob-deleted, started before."""
    found = (await session.execute(
        select(Recording.bucket_start).where(
            Recording.region == region, Recording.shredded_at.is_(None), Recording.blob_deleted_at.is_(None),
            Recording.started_at < started_before,
        ).distinct().order_by(Recording.bucket_start)
    )).scalars()
    return list(found)


async def blob_states_of_hour(
    *, session: AsyncSession, region: str, bucket_start: datetime,
) -> dict[str, RecordingBlobState]:
    """Every row of a region's bucket hour, by request ID."""
    found = await session.execute(
        select(Recording.request_id, Recording.blob_name, Recording.started_at, Recording.state,
               Recording.shredded_at, Recording.blob_deleted_at)
        .where(Recording.region == region, Recording.bucket_start == bucket_start)
    )
    return {r[0]: RecordingBlobState(r[0], r[1], r[2], r[3], r[4] is not None, r[5] is not None) for r in found}


async def mark_blob_deleted(*, session: AsyncSession, request_id: str, at: datetime) -> None:
    """Record that a row's blob is gone (once: a row already marked keeps its time)."""
    await session.execute(update(Recording).where(
        Recording.request_id == request_id, Recording.blob_deleted_at.is_(None),
    ).values(blob_deleted_at=at))


def mark_shredded(recording: RecordingRow, *, at: datetime, reason: ShredReason, receipt: str) -> None:
    """A row's part of destroying its recording: wrapped DEK gone, marked erased or purged, receipt kept."""
    recording.wrapped_dek = None
    recording.shredded_at = at
    recording.shred_reason = reason
    recording.state = RecordingState.ERASED if reason is ShredReason.ERASURE else RecordingState.PURGED
    recording.owner = None
    recording.receipt = receipt


def _claiming(session: AsyncSession, query: Select[Recording]) -> Select[Recording]:
    return query.with_for_update(skip_locked=True) if session.get_bind().dialect.name == "postgresql" else query

