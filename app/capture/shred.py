"""Destroying one recording: its data key first, then its blob, leaving a receipt (C7, erasure).

Capture owns recordings, so destroying one lives here: the customer's erasure (`service.py`) and
retention's purge, orphan sweep and blob retries (`app.retention`) call it, and it imports nothing of
retention.

Step 1 (one transaction): the key service is told to refuse the wrapped DEK, the wrapped DEK is deleted
from the row, the row is marked shredded with a receipt, and the audit entries are written. From its
commit on, no copy of the blob can be decrypted. Step 2: the blob and its parts are deleted; if that
fails the row keeps `blob_deleted_at` empty ("blob pending") and `delete_pending_blobs` retries it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.actions import Actor, AuditAction, Subjects, detail_time, kek_bucket
from app.audit.service import append_entry
from app.capture.retention_service import claim_oldest_blobs_pending, mark_shredded
from app.capture.states import ShredReason
from app.clock import Clock
from app.logs import get_logger
from app.request_id import RequestId
from app.storage.errors import NotFound, StorageError
from app.storage.layout import RecordingKey
from app.storage.router import RegionRouter
from app.vault.errors import MalformedWrappedKey, UnknownVersion
from app.vault.keyring import RegionKeyrings
from app.vault.shredding import shred_data_key

if TYPE_CHECKING:
    from app.capture.service import RecordingRow

log = get_logger("voicelog.retention")


@dataclass(frozen=True)
class ShredReceipt:
    request_id: RequestId
    region: str
    kek_bucket: str
    started_at: datetime
    shredded_at: datetime
    reason: ShredReason
    wrapped_key_sha256: str | None
    blob_name: str

    def to_json(self) -> str:
        return json.dumps({
            "request_id": self.request_id, "region": self.region, "kek_bucket": self.kek_bucket,
            "started_at": detail_time(self.started_at), "shredded_at": detail_time(self.shredded_at),
            "reason": self.reason, "wrapped_key_sha256": self.wrapped_key_sha256, "blob_name": self.blob_name,
        }, sort_keys=True, separators=(",", ":"))


async def erase_data_key(*, keyrings: RegionKeyrings, recording: RecordingRow, now: datetime) -> None:
    """Have the key service refuse the recording's wrapped DEK from now on, in every copy (idempotent)."""
    wrapped = recording.wrapped_dek
    if wrapped is None:
        return
    try:
        await shred_data_key(keyrings.for_region(recording.region), wrapped, region=recording.region,
                             request_id=recording.request_id, now=now)
    except (MalformedWrappedKey, UnknownVersion):
        # Bytes that do not parse as a wrapped key cannot be erased one by one, nor unwrapped by this
        # code; deleting them goes on, and the bucket's KEK destruction covers any copy (C7).
        log.warning("recording.wrapped_key_unparsable", request_id=recording.request_id, region=recording.region)


async def erase_data_keys(
    *, keyrings: RegionKeyrings, recordings: Sequence[RecordingRow], now: datetime, concurrency: int = 1
) -> None:
    """`erase_data_key` for several recordings, `concurrency` key service calls at a time; raises on a failure."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(recording: RecordingRow) -> None:
        async with gate:
            await erase_data_key(keyrings=keyrings, recording=recording, now=now)

    await asyncio.gather(*(one(r) for r in recordings))


async def shred_recording(
    *, session: AsyncSession, clock: Clock, keyrings: RegionKeyrings, recording: RecordingRow, reason: ShredReason,
    actor: Actor, key_erased: bool = False,
) -> ShredReceipt:
    """Step 1 in the caller's transaction: after its commit the recording is unreadable everywhere.

    `key_erased=True`: the caller already had the key service erase this wrapped DEK (`erase_data_keys`,
    the batched purge), so only the row, the receipt and the audit entries remain to be done here.
    """
    now = clock.now()
    if not key_erased:
        await erase_data_key(keyrings=keyrings, recording=recording, now=now)
    shredded = _mark_shredded(recording, now=now, reason=reason)
    await _audit_shredded(session=session, clock=clock, actor=actor, shredded=shredded)
    return shredded.receipt


async def shred_recordings(
    *, session: AsyncSession, clock: Clock, recordings: Sequence[RecordingRow], reason: ShredReason,
    actor: Actor,
) -> list[ShredReceipt]:
    """`shred_recording(key_erased=True)` for many rows at once: the rows are written in one flush (one
    batched UPDATE), then their audit entries. For a caller that erased the keys first (the purge)."""
    now = clock.now()
    shredded = [_mark_shredded(recording, now=now, reason=reason) for recording in recordings]
    await session.flush()
    for item in shredded:
        await _audit_shredded(session=session, clock=clock, actor=actor, shredded=item)
    return [item.receipt for item in shredded]


@dataclass(frozen=True)
class _Shredded:
    recording: RecordingRow
    receipt: ShredReceipt
    had_key: bool


def _mark_shredded(recording: RecordingRow, *, now: datetime, reason: ShredReason) -> _Shredded:
    """The row's part of step 1: wrapped DEK gone, marked, receipt kept."""
    wrapped = recording.wrapped_dek
    receipt = ShredReceipt(
        request_id=recording.request_id, region=recording.region, kek_bucket=kek_bucket(recording.started_at),
        started_at=recording.started_at, shredded_at=now, reason=reason,
        wrapped_key_sha256=hashlib.sha256(wrapped).hexdigest() if wrapped is not None else None,
        blob_name=recording.blob_name,
    )
    mark_shredded(recording, at=now, reason=reason, receipt=receipt.to_json())
    return _Shredded(recording, receipt, wrapped is not None)


async def _audit_shredded(*, session: AsyncSession, clock: Clock, actor: Actor, shredded: _Shredded) -> None:
    recording, receipt = shredded.recording, shredded.receipt
    subjects = Subjects(request_id=recording.request_id)
    age_s = max(0, int((receipt.shredded_at - recording.started_at).total_seconds()))
    await append_entry(session=session, clock=clock, actor=actor, action=AuditAction.RECORDING_PURGED,
                       subjects=subjects,
                       detail={"region": recording.region, "started_at": detail_time(recording.started_at),
                               "age_s": age_s, "reason": receipt.reason, "kek_bucket": receipt.kek_bucket})
    if shredded.had_key:
        await append_entry(session=session, clock=clock, actor=actor, action=AuditAction.KEY_DESTROYED,
                           subjects=subjects,
                           detail={"key_kind": "dek", "region": recording.region,
                                   "key_ref": receipt.wrapped_key_sha256 or ""})


async def delete_blob(*, stores: RegionRouter, recording: RecordingRow) -> bool:
    """Step 2: delete the blob and its parts. False if the store failed (retried later)."""
    key = RecordingKey(recording.request_id, recording.started_at)
    try:
        try:
            await stores.store(recording.region).delete(key)
        except NotFound:
            # The object (or its directory) vanished under a concurrent delete: look once more. A delete of
            # nothing succeeds, so this settles whether anything is left.
            await stores.store(recording.region).delete(key)
    except StorageError:
        log.warning("recording.blob_delete_failed", request_id=recording.request_id, region=recording.region)
        return False
    return True


async def delete_blobs(
    *, clock: Clock, stores: RegionRouter, recordings: Sequence[RecordingRow], concurrency: int = 1
) -> int:
    """Step 2 for several recordings, `concurrency` deletes at a time; marks those done (the caller flushes).

    Only for recordings whose step 1 is committed. Returns how many blobs were deleted; the rest stay
    "blob pending" and `delete_pending_blobs` retries them.
    """
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(recording: RecordingRow) -> bool:
        async with gate:
            return await delete_blob(stores=stores, recording=recording)

    results = await asyncio.gather(*(one(r) for r in recordings))
    now = clock.now()
    done = 0
    for recording, deleted in zip(recordings, results, strict=True):
        if deleted and recording.blob_deleted_at is None:
            recording.blob_deleted_at = now
            done += 1
    return done


async def delete_pending_blobs(
    *, session: AsyncSession, clock: Clock, stores: RegionRouter, limit: int = 500, concurrency: int = 1,
) -> int:
    """Retry blob deletes of shredded recordings ("blob pending"); returns how many were finished.

    On PostgreSQL the rows are claimed (`FOR UPDATE SKIP LOCKED`) until the caller commits, so replicas
    retry different rows.
    """
    rows = await claim_oldest_blobs_pending(session=session, limit=limit)
    done = await delete_blobs(clock=clock, stores=stores, recordings=rows, concurrency=concurrency)
    await session.flush()
    return done
