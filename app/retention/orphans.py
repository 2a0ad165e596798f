"""The orphan sweep: stored blobs without a live recording, and live recordings without a blob.

Every `orphan_sweep_every_s` each region's store is listed, hour directory by hour directory, beside that
hour's recording rows:

- a blob whose row is shredded but whose delete is still pending: deleted now and the row marked (step 2 of
  a purge or erasure that is already audited);
- a blob older than `orphan_min_age_s` with no row in that region whose bucket's lifetime (30 days, C7)
  has passed: deleted whatever
  the audit trail says of it, audited as `recording.purged` (reason `retention`; see
  `audit_expired_orphan_purge`), so the retention report counts it;
- a younger blob older than `orphan_min_age_s` with no row in that region, or whose recording was purged
  and its blob deleted before (a restore from soft delete or backup, a writer that outlived its
  recording): an orphan, deleted and audited (`ORPHAN_DELETED_ACTION`, see below);
- a live row older than `orphan_min_age_s` whose blob is not there: flagged (metric and log, ids only).

Orphans are unreadable once their bucket's KEK is gone; the sweep keeps the stores tidy and makes them
visible. It runs on one replica at a time (an exclusive job).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.actions import Actor, AuditAction, Subjects, detail_time, kek_bucket
from app.audit.service import append_entry
from app.capture.retention_service import (
    RecordingBlobState,
    blob_states_of_hour,
    hours_with_live_rows,
    mark_blob_deleted,
)
from app.clock import Clock
from app.logs import get_logger
from app.retention.metrics import RetentionMetrics
from app.storage.errors import NotFound, StorageError
from app.storage.layout import StoredObject
from app.storage.protocol import BlobStore
from app.storage.router import RegionRouter

log = get_logger("voicelog.retention")

SWEEP_ACTOR = Actor.system("retention")
ORPHAN_DELETED_ACTION = "storage.orphan_deleted"
"""The audit action an orphan's deletion is recorded with. It is not in `app.audit.actions` yet: until it is,
orphans are found, counted and logged, but not deleted (C6: nothing is destroyed without its entry). Its
detail: region, blob_hour (`YYYY-MM-DDTHH`), created_at, parts, reason (`no_row` | `row_purged`)."""

NO_ROW = "no_row"
ROW_PURGED = "row_purged"
EXPIRED_NO_ROW = "expired_no_row"
"""No row, and the bucket's lifetime has passed: deleted and audited as `recording.purged` (reason retention)."""


def orphan_audit_action() -> AuditAction | None:
    try:
        return AuditAction(ORPHAN_DELETED_ACTION)
    except ValueError:
        return None


@dataclass
class OrphanSweepResult:
    objects_listed: int = 0
    orphans_deleted: int = 0
    orphans_kept: int = 0  # found but not deleted (store error, or the audit action is missing)
    pending_deleted: int = 0  # blobs of shredded recordings whose delete was pending
    rows_missing_blob: int = 0
    failed_regions: int = 0

    @property
    def items(self) -> int:
        return self.orphans_deleted + self.pending_deleted


async def audit_expired_orphan_purge(
    *, session: AsyncSession, clock: Clock, region: str, orphan: StoredObject
) -> None:
    """The entry of an orphan deleted past its bucket's lifetime, in `session` (the caller commits).

    `recording.purged` with reason `retention`: no row means no other record of the recording, and this is
    its retention purge. `started_at` is the blob's creation time (the nearest the store knows), `age_s`
    the blob's age now, `kek_bucket` its hour; its content was undecryptable since that bucket's KEK went.
    """
    now = clock.now()
    await append_entry(
        session=session, clock=clock, actor=SWEEP_ACTOR, action=AuditAction.RECORDING_PURGED,
        subjects=Subjects(request_id=orphan.request_id),
        detail={"region": region, "started_at": detail_time(orphan.created_at),
                "age_s": max(0, int((now - orphan.created_at).total_seconds())), "reason": "retention",
                "kek_bucket": kek_bucket(orphan.hour)},
    )


async def audit_orphan_deletion(
    *, session: AsyncSession, clock: Clock, region: str, orphan: StoredObject, reason: str
) -> bool:
    """Write the orphan's audit entry in `session` (the caller commits). False if there is no action for it."""
    action = orphan_audit_action()
    if action is None:
        return False
    await append_entry(
        session=session, clock=clock, actor=SWEEP_ACTOR, action=action, subjects=Subjects(request_id=orphan.request_id),
        detail={"region": region, "blob_hour": kek_bucket(orphan.hour), "created_at": detail_time(orphan.created_at),
                "parts": orphan.parts, "reason": reason},
    )
    return True


class OrphanSweep:
    """One sweep over every region; `run()` is the scheduled job."""

    def __init__(
        self,
        *,
        session_factory: async_sessionmaker[AsyncSession],
        clock: Clock,
        stores: RegionRouter,
        min_age: timedelta,
        lifetime: timedelta,
        metrics: RetentionMetrics | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.clock = clock
        self.stores = stores
        self.min_age = min_age
        self.lifetime = lifetime
        self.metrics = metrics

    async def run(self) -> OrphanSweepResult:
        result = OrphanSweepResult()
        for region in self.stores.regions:
            before_kept, before_missing = result.orphans_kept, result.rows_missing_blob
            try:
                await self.sweep_region(region, result)
            except Exception as exc:  # a region's store being down never stops the others
                result.failed_regions += 1
                log.warning("retention.sweep.region_failed", region=region, error=type(exc).__name__)
                continue
            if self.metrics is not None:
                self.metrics.orphans_kept.labels(region=region).set(result.orphans_kept - before_kept)
                self.metrics.rows_missing_blob.labels(region=region).set(result.rows_missing_blob - before_missing)
        log.info("retention.sweep.done", listed=result.objects_listed, orphans_deleted=result.orphans_deleted,
                 orphans_kept=result.orphans_kept, pending_deleted=result.pending_deleted,
                 rows_missing_blob=result.rows_missing_blob, failed_regions=result.failed_regions)
        return result

    async def sweep_region(self, region: str, result: OrphanSweepResult) -> None:
        store = self.stores.store(region)
        now = self.clock.now()
        # Hours that hold live rows old enough to need their blob, merged in order with the listing's hours.
        hours_to_check = await self._hours_with_live_rows(region, now - self.min_age)
        async for hour, objects in _by_hour(store.list_objects()):
            while hours_to_check and hours_to_check[0] < hour:
                await self._check_hour(store, hours_to_check.pop(0), [], now, result)
            if hours_to_check and hours_to_check[0] == hour:
                hours_to_check.pop(0)
            result.objects_listed += len(objects)
            await self._check_hour(store, hour, objects, now, result)
        for hour in hours_to_check:
            await self._check_hour(store, hour, [], now, result)

    async def _hours_with_live_rows(self, region: str, older_than: datetime) -> list[datetime]:
        async with self.session_factory() as session:
            return await hours_with_live_rows(session=session, region=region, started_before=older_than)

    async def _rows(self, region: str, hour: datetime) -> dict[str, RecordingBlobState]:
        async with self.session_factory() as session:
            return await blob_states_of_hour(session=session, region=region, bucket_start=hour)

    async def _check_hour(self, store: BlobStore, hour: datetime, objects: list[StoredObject], now: datetime,
                          result: OrphanSweepResult) -> None:
        rows = await self._rows(store.region, hour)
        names = {o.name for o in objects}
        young = now - self.min_age
        for obj in objects:
            row = rows.get(obj.request_id)
            ours = row is not None and row.blob_name == obj.name
            if ours and row is not None and not row.shredded:
                continue  # a live recording's blob
            if ours and row is not None and not row.blob_deleted:
                await self._finish_pending(store, obj, result)
                continue
            if obj.created_at > young:
                continue  # too new to judge: its row may not be committed yet (even in an old bucket)
            if row is None and hour + self.lifetime <= now:
                await self._delete_orphan(store, obj, EXPIRED_NO_ROW, result)  # past 30 days: never kept
                continue
            await self._delete_orphan(store, obj, ROW_PURGED if ours else NO_ROW, result)
        for row in rows.values():
            if not row.shredded and row.started_at < young and row.blob_name not in names:
                result.rows_missing_blob += 1
                log.warning("retention.row.blob_missing", region=store.region, request_id=row.request_id,
                            state=row.state)

    async def _finish_pending(self, store: BlobStore, obj: StoredObject, result: OrphanSweepResult) -> None:
        if not await _delete(store, obj):
            return
        async with self.session_factory() as session:
            await mark_blob_deleted(session=session, request_id=obj.request_id, at=self.clock.now())
            await session.commit()
        result.pending_deleted += 1

    async def _delete_orphan(self, store: BlobStore, obj: StoredObject, reason: str,
                             result: OrphanSweepResult) -> None:
        """Entry and delete in one transaction: no entry without the delete, and the delete's entry commits with it."""
        async with self.session_factory() as session:
            if reason == EXPIRED_NO_ROW:
                await audit_expired_orphan_purge(session=session, clock=self.clock, region=store.region, orphan=obj)
            elif not await audit_orphan_deletion(session=session, clock=self.clock, region=store.region,
                                                 orphan=obj, reason=reason):
                result.orphans_kept += 1
                log.warning("retention.orphan.kept", region=store.region, request_id=obj.request_id,
                            reason=reason, why="no_audit_action")
                return
            if not await _delete(store, obj):
                await session.rollback()
                result.orphans_kept += 1
                return
            await session.commit()
        result.orphans_deleted += 1
        if self.metrics is not None:
            self.metrics.orphans_deleted.labels(region=store.region, reason=reason).inc()
        log.info("retention.orphan.deleted", region=store.region, request_id=obj.request_id, reason=reason,
                 parts=obj.parts)


async def _delete(store: BlobStore, obj: StoredObject) -> bool:
    try:
        try:
            await store.delete(obj.key)
        except NotFound:
            await store.delete(obj.key)  # vanished under a concurrent delete: settle it
    except StorageError as exc:
        log.warning("retention.sweep.delete_failed", region=store.region, request_id=obj.request_id,
                    error=exc.code)
        return False
    return True


async def _by_hour(listing: AsyncIterator[StoredObject]) -> AsyncIterator[tuple[datetime, list[StoredObject]]]:
    """A listing (ordered by name, so by hour) cut into one list per hour directory."""
    hour: datetime | None = None
    group: list[StoredObject] = []
    async for obj in listing:
        if hour is not None and obj.hour != hour:
            yield hour, group
            group = []
        hour = obj.hour
        group.append(obj)
    if hour is not None:
        yield hour, group
