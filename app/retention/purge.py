"""The purge (C7): when a (region, UTC hour) KEK bucket reaches its 30 days, everything in it goes.

Per bucket, in this order, each step idempotent and committed before the next:

1. every recording: the key service refuses its wrapped DEK (`erase_data_keys`, many calls at once), then
   the wrapped DEK is deleted, the row is marked purged with a receipt, `recording.purged` and
   `key.destroyed` (dek) are audited (`shred_recordings`), one transaction per batch;
2. its blob and parts are deleted (a failure leaves "blob pending", retried by `delete_pending_blobs`);
   batches form a pipeline: batch k+1's keys are erased while batch k is marked and its blobs deleted;
3. the bucket's KEK is destroyed and `key.destroyed` (kek) audited, once: after this no copy of any
   recording of the bucket (backup, snapshot, soft-deleted blob) can be decrypted.

A crash between any two steps leaves nothing readable that was not before, and the next run finishes the
bucket: step 1 picks rows not yet marked, step 3 is repeated and audited only the first time. The KEK goes
when every row is marked, and at the end of the bucket's life in any case (a row that cannot be processed
does not keep a key alive past 30 days). KEKs of expired buckets that no row points to are destroyed the
same way, found through the keyring (once per hour of deadlines, it lists keys).

Replicas: a bucket is claimed with `SELECT ... FOR UPDATE SKIP LOCKED` on its `retention_buckets` row, held
by a transaction open for the bucket's whole purge; recordings are claimed the same way batch by batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, cast

from sqlalchemy import Table, select, union, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.actions import Actor, AuditAction, kek_bucket
from app.audit.service import append_entry
from app.capture.retention_service import (
    claim_blobs_pending,
    claim_unshredded,
    count_unshredded,
    unpurged_buckets,
    unshredded_page,
)
from app.capture.shred import delete_blobs, erase_data_keys, shred_recordings
from app.capture.states import ShredReason
from app.clock import Clock
from app.logs import get_logger
from app.retention.locks import insert_ignoring_duplicates, is_postgresql, take_write_lock
from app.retention.metrics import RetentionMetrics
from app.retention.models import RetentionBucket
from app.retention.policy import bucket_hour, purge_cutoff, purge_due_at
from app.retention.settings import RetentionSettings
from app.storage.router import RegionRouter
from app.vault.keyring import KeyBucket, KeyDestruction, RegionKeyrings
from app.vault.shredding import destroy_bucket, destroy_expired_buckets

if TYPE_CHECKING:
    from app.capture.service import RecordingRow

log = get_logger("voicelog.retention")

RETENTION_ACTOR = Actor.system("retention")
_BATCHES_IN_FLIGHT = 2  # batches whose rows or blobs are being done while the next batch's keys are erased
_PAGE_BATCHES = 10  # batches read per page of a bucket's rows
BUCKETS: Final = cast(Table, RetentionBucket.__table__)


@dataclass
class PurgeResult:
    """What one purge run did."""

    buckets_finished: int = 0  # KEK destroyed and audited by this run
    recordings_purged: int = 0  # step 1 done by this run
    blobs_deleted: int = 0
    blobs_pending: int = 0  # blob deletes that failed in this run
    buckets_skipped: int = 0  # claimed by another replica
    buckets_failed: int = 0  # left for the next run by an error
    overdue_buckets: int = 0  # past their 30 days and not finished after this run
    keks_without_rows: int = 0  # expired KEKs found only through the keyring

    @property
    def items(self) -> int:
        return self.recordings_purged + self.buckets_finished


@dataclass
class _BucketClaim:
    """A claimed bucket. On PostgreSQL `session` holds the bucket row's lock until the claim ends."""

    bucket: KeyBucket
    session: AsyncSession | None
    errors: list[str] = field(default_factory=list)


class Purger:
    """The purge job. One per process; `run()` every minute (any number of replicas)."""

    def __init__(
        self,
        *,
        session_factory: async_sessionmaker[AsyncSession],
        clock: Clock,
        keyrings: RegionKeyrings,
        stores: RegionRouter,
        settings: RetentionSettings,
        lifetime: timedelta,
        metrics: RetentionMetrics | None = None,
        owner: str = "voicelog",
    ) -> None:
        self.session_factory = session_factory
        self.clock = clock
        self.keyrings = keyrings
        self.stores = stores
        self.settings = settings
        self.lifetime = lifetime
        self.metrics = metrics
        self.owner = owner[:64]
        self._keyring_swept_through: datetime | None = None

    # --- the run ------------------------------------------------------------------------------------

    async def run(self) -> PurgeResult:
        """Purge every due bucket (claimed by this replica); returns what was done."""
        now = self.clock.now()
        cutoff = purge_cutoff(now, self.lifetime, self.settings.purge_lead)
        due = set(await self.due_buckets(cutoff))
        sweep_keyring = self._keyring_swept_through is None or bucket_hour(cutoff) > self._keyring_swept_through
        keyring_ok = False
        result = PurgeResult()
        if sweep_keyring:
            try:
                live = await self.keyrings.live_buckets(started_before=cutoff + timedelta(microseconds=1))
                keyring_ok = True
            except Exception as exc:  # the key service may be down: rows are still purged, keys next time
                self._count_error("keyring_list")
                log.warning("retention.keyring_list_failed", error=type(exc).__name__)
                live = []
            known = {(b.region, b.hour) for b in due}
            for bucket in live:
                if bucket.hour <= cutoff and (bucket.region, bucket.hour) not in known:
                    due.add(bucket)
                    result.keks_without_rows += 1
        unfinished: list[KeyBucket] = []
        for bucket in sorted(due, key=lambda b: (b.hour, b.region)):
            try:
                finished = await self.purge_bucket(bucket, result=result)
            except Exception as exc:  # one bucket's failure never stops the others
                finished = False
                result.buckets_failed += 1
                self._count_error("bucket")
                log.error("retention.bucket_failed", region=bucket.region, bucket=bucket.label,
                          error=type(exc).__name__)
            if not finished:
                unfinished.append(bucket)
        if keyring_ok:
            await self._destroy_expired_leftovers(now, result)
            self._keyring_swept_through = bucket_hour(cutoff)
        result.overdue_buckets = sum(1 for b in unfinished if b.expired(now, self.lifetime))
        if self.metrics is not None:
            self.metrics.overdue_buckets.set(result.overdue_buckets)
        if result.items or result.buckets_failed or result.overdue_buckets:
            log.info("retention.purge.run", buckets_finished=result.buckets_finished,
                     recordings=result.recordings_purged, blobs_deleted=result.blobs_deleted,
                     blobs_pending=result.blobs_pending, skipped=result.buckets_skipped,
                     failed=result.buckets_failed, overdue=result.overdue_buckets)
        return result

    async def purge_bucket(self, bucket: KeyBucket, *, result: PurgeResult | None = None) -> bool:
        """Steps 1-3 for one bucket. True when its KEK is destroyed (now or before); False: retry later."""
        result = result if result is not None else PurgeResult()
        now = self.clock.now()
        await self._register(bucket, now)
        async with self._claim(bucket) as claim:
            if claim is None:
                result.buckets_skipped += 1
                return True  # another replica has it
            remaining = await self._shred_and_delete(claim, result)
            if remaining and not bucket.expired(self.clock.now(), self.lifetime):
                return False  # rows left (an error, or claimed by an erasure): retried next run
            if remaining:
                # C7 outranks the bookkeeping: past the bucket's life its KEK goes, rows or not.
                log.error("retention.kek_destroyed_with_rows_left", region=bucket.region, bucket=bucket.label,
                          recordings=remaining)
            destruction = await destroy_bucket(self.keyrings.for_region(bucket.region), bucket)
            if await self._record_kek(claim, destruction):
                result.buckets_finished += 1
                if self.metrics is not None:
                    self.metrics.kek_buckets_destroyed.labels(region=bucket.region).inc()
            return True

    # --- which buckets ------------------------------------------------------------------------------

    async def due_buckets(self, cutoff: datetime) -> list[KeyBucket]:
        """Buckets started by `cutoff` with rows not yet purged, or whose KEK is not recorded destroyed."""
        rows = unpurged_buckets(started_by=cutoff)
        opened = select(RetentionBucket.region, RetentionBucket.bucket_start).where(
            RetentionBucket.kek_destroyed_at.is_(None), RetentionBucket.bucket_start <= cutoff,
        )
        async with self.session_factory() as session:
            found = (await session.execute(union(rows, opened))).all()
        buckets: set[KeyBucket] = set()
        for region, start in found:
            try:
                buckets.add(KeyBucket.of(str(region), start))
            except ValueError:
                log.error("retention.bucket_invalid", region=str(region)[:32])
        return sorted(buckets)

    async def _register(self, bucket: KeyBucket, now: datetime) -> None:
        """Make sure the bucket has its `retention_buckets` row (the thing replicas claim)."""
        due_at = purge_due_at(bucket.hour, self.lifetime, self.settings.purge_lead)
        async with self.session_factory() as session:
            await session.execute(insert_ignoring_duplicates(session, BUCKETS, {
                "region": bucket.region, "bucket_start": bucket.hour, "due_at": due_at, "first_seen_at": now,
            }))
            await session.commit()

    @contextlib.asynccontextmanager
    async def _claim(self, bucket: KeyBucket) -> AsyncIterator[_BucketClaim | None]:
        async with self.session_factory() as session:
            if not is_postgresql(session):
                yield _BucketClaim(bucket, None)  # one process: the scheduler runs the purge once at a time
                return
            query = select(RetentionBucket).where(
                RetentionBucket.region == bucket.region, RetentionBucket.bucket_start == bucket.hour,
            ).with_for_update(skip_locked=True)
            row = (await session.execute(query)).scalar_one_or_none()
            if row is None:
                await session.rollback()
                yield None
                return
            # A lock only, no write: a row being updated would make other replicas' inserts of it wait.
            try:
                yield _BucketClaim(bucket, session)
            except BaseException:
                await session.rollback()
                raise
            await session.commit()

    # --- steps 1 and 2 --------------------------------------------------------------------------------

    async def _shred_and_delete(self, claim: _BucketClaim, result: PurgeResult) -> int:
        """Steps 1 and 2 as a pipeline over batches: batch k+1's keys are erased in the key service while
        batch k's rows are marked (one transaction) and then its blobs deleted.

        Returns how many rows of the bucket are still not purged.
        """
        in_flight: set[asyncio.Task[int]] = set()
        errors: list[BaseException] = []
        cursor: tuple[datetime, str] | None = None
        try:
            while not errors:
                page = await self._unshredded(claim.bucket, after=cursor)
                if not page:
                    break
                cursor = (page[-1].started_at, page[-1].request_id)
                for start in range(0, len(page), self.settings.purge_batch):
                    batch = page[start:start + self.settings.purge_batch]
                    await erase_data_keys(keyrings=self.keyrings, recordings=batch, now=self.clock.now(),
                                          concurrency=self.settings.key_erase_concurrency)
                    in_flight.add(asyncio.create_task(self._mark_and_delete(batch, result)))
                    if len(in_flight) >= _BATCHES_IN_FLIGHT:
                        done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                        errors += [e for e in (t.exception() for t in done) if e is not None]
                    if errors:
                        break
        except Exception as exc:  # the key service failed: what committed stands, the rest is retried
            errors.append(exc)
        finally:
            if in_flight:
                outcomes = await asyncio.gather(*in_flight, return_exceptions=True)
                errors += [e for e in outcomes if isinstance(e, BaseException)]
        for error in errors:
            if not isinstance(error, Exception):
                raise error
            self._count_error("shred")
            log.warning("retention.shred_failed", region=claim.bucket.region, bucket=claim.bucket.label,
                        error=type(error).__name__)
        return await self._rows_left(claim.bucket)

    async def _unshredded(self, bucket: KeyBucket, *, after: tuple[datetime, str] | None) -> list[RecordingRow]:
        """The next page of the bucket's rows not yet purged, in start order (the bucket is claimed by us)."""
        async with self.session_factory() as session:
            return await unshredded_page(session=session, region=bucket.region, bucket_start=bucket.hour, after=after,
                                         limit=self.settings.purge_batch * _PAGE_BATCHES)

    async def _mark_and_delete(self, batch: Sequence[RecordingRow], result: PurgeResult) -> int:
        """Step 1 for a batch whose keys the key service already refuses: rows marked and audited, committed.
        Then step 2 for it. Returns how many rows this marked; raises if the transaction fails (the batch is
        retried by the next run)."""
        async with self.session_factory() as session:
            await take_write_lock(session)
            rows = await claim_unshredded(session=session, request_ids=[r.request_id for r in batch])
            await shred_recordings(session=session, clock=self.clock, recordings=rows, reason=ShredReason.RETENTION,
                                   actor=RETENTION_ACTOR)
            await session.commit()
        result.recordings_purged += len(rows)
        if self.metrics is not None and rows:
            self.metrics.recordings_purged.labels(region=rows[0].region).inc(len(rows))
        if rows:
            await self._delete_batch_blobs(rows, result)
        return len(rows)

    async def _delete_batch_blobs(self, batch: Sequence[RecordingRow], result: PurgeResult) -> None:
        """Step 2 for a committed batch; failures stay "blob pending". Never raises."""
        try:
            async with self.session_factory() as session:
                rows = await claim_blobs_pending(session=session, request_ids=[r.request_id for r in batch])
                done = await delete_blobs(clock=self.clock, stores=self.stores, recordings=rows,
                                          concurrency=self.settings.blob_delete_concurrency)
                await session.commit()
        except Exception as exc:
            self._count_error("blob_delete")
            log.warning("retention.blob_batch_failed", recordings=len(batch), error=type(exc).__name__)
            result.blobs_pending += len(batch)
            return
        result.blobs_deleted += done
        result.blobs_pending += len(rows) - done
        if self.metrics is not None:
            self.metrics.blobs_deleted.inc(done)
            self.metrics.blob_delete_failures.inc(len(rows) - done)

    async def _rows_left(self, bucket: KeyBucket) -> int:
        async with self.session_factory() as session:
            return await count_unshredded(session=session, region=bucket.region, bucket_start=bucket.hour)

    # --- step 3 ---------------------------------------------------------------------------------------

    async def _record_kek(self, claim: _BucketClaim, destruction: KeyDestruction) -> bool:
        """Mark the bucket's KEK destroyed and audit it, the first time only. True if this call did."""
        if claim.session is not None:
            return await self._mark_kek(claim.session, claim.bucket, destruction)
        async with self.session_factory() as session:
            first = await self._mark_kek(session, claim.bucket, destruction)
            await session.commit()
        return first

    async def _mark_kek(self, session: AsyncSession, bucket: KeyBucket, destruction: KeyDestruction) -> bool:
        changed: Any = await session.execute(
            update(RetentionBucket).where(
                RetentionBucket.region == bucket.region, RetentionBucket.bucket_start == bucket.hour,
                RetentionBucket.kek_destroyed_at.is_(None),
            ).values(kek_destroyed_at=destruction.destroyed_at, kek_provider=destruction.provider[:32],
                     kek_key_name=destruction.key_name[:255], claimed_at=self.clock.now(), claimed_by=self.owner)
        )
        if getattr(changed, "rowcount", 0) != 1:
            return False
        await append_entry(
            session=session, clock=self.clock, actor=RETENTION_ACTOR, action=AuditAction.KEY_DESTROYED,
            detail={"key_kind": "kek", "region": bucket.region, "bucket": kek_bucket(bucket.hour),
                    "key_ref": destruction.key_name[:128]},
        )
        log.info("retention.kek.destroyed", region=bucket.region, bucket=bucket.label, provider=destruction.provider)
        return True

    async def _destroy_expired_leftovers(self, now: datetime, result: PurgeResult) -> None:
        """The vault's own sweep, last: any expired KEK still alive is destroyed here, and audited."""
        try:
            leftovers = await destroy_expired_buckets(self.keyrings, now=now, lifetime=self.lifetime)
        except Exception as exc:
            self._count_error("keyring_sweep")
            log.warning("retention.keyring_sweep_failed", error=type(exc).__name__)
            return
        for destruction in leftovers:
            await self._register(destruction.bucket, now)
            if await self._record_kek(_BucketClaim(destruction.bucket, None), destruction):
                result.buckets_finished += 1

    def _count_error(self, step: str) -> None:
        if self.metrics is not None:
            self.metrics.purge_errors.labels(step=step).inc()
