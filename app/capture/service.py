"""What a customer's admin may do with their own resource's recordings: list them, erase them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias, TypeVarTuple

from sqlalchemy import Select, SQLColumnExpression, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.actions import Actor, AuditAction, Subjects
from app.audit.service import append_entry
from app.capture.models import Recording
from app.capture.recorder import Recorder
from app.capture.shred import ShredReceipt, delete_blob, shred_recording
from app.capture.states import IncompleteReason, ShredReason
from app.clock import Clock
from app.identity.principal import Principal
from app.request_id import RequestId
from app.resources.models import Resource
from app.storage.router import RegionRouter
from app.tickets.consent_cache import ConsentCache
from app.tickets.models import Consent
from app.tickets.service import end_consent, require_consent
from app.tickets.states import ConsentEnding
from app.vault.keyring import RegionKeyrings

RecordingRow: TypeAlias = Recording
"""A recording's row as other domains hold it: found through this module, read, handed back to capture
(the reader streams it); never queried by them."""


async def find_recording(*, session: AsyncSession, request_id: RequestId) -> RecordingRow | None:
    """One recording by request ID (a primary-key get: one lookup, none when the session already holds it)."""
    return await session.get(Recording, request_id)


async def recordings_among(*, session: AsyncSession, request_ids: list[str], resource_id: str) -> set[RequestId]:
    """Which of `request_ids` are recordings of the resource: one query whatever the IDs are (C4)."""
    found = await session.execute(select(Recording.request_id)
                                  .where(Recording.request_id.in_(request_ids), Recording.resource_id == resource_id))
    return set(found.scalars())


_Columns = TypeVarTuple("_Columns")


def among_recordings_of_resource(
    query: Select[*_Columns], *, request_id: SQLColumnExpression[str], resource_id: str,
) -> Select[*_Columns]:
    """`query` kept to rows whose `request_id` names a recording of the resource: a join in the caller's one
    statement (C4)."""
    return query.join(Recording, Recording.request_id == request_id).where(Recording.resource_id == resource_id)


async def recordings_of_resource(
    *, session: AsyncSession, resource: Resource, correlation_id: str | None = None, limit: int = 500
) -> Sequence[Recording]:
    """The customer's own recordings, newest first (C4 allows this for the owning tenant only)."""
    query = select(Recording).where(Recording.resource_id == resource.id)
    if correlation_id is not None:
        query = query.where(Recording.correlation_id == correlation_id)
    return (await session.execute(query.order_by(Recording.started_at.desc()).limit(limit))).scalars().all()


@dataclass(frozen=True)
class ErasureReceipt:
    consent_id: str
    erased_at: datetime
    recordings: int
    receipts: list[dict[str, object]]
    blobs_pending: list[RequestId]
    receipt_sha256: str


async def erase_customer_recordings(
    *, session: AsyncSession, clock: Clock, keyrings: RegionKeyrings, consents: ConsentCache, stores: RegionRouter,
    recorder: Recorder, actor: Principal, resource: Resource, consent_id: str, commit: Callable[[], Awaitable[None]],
) -> ErasureReceipt:
    """Erase every recording made under a consent, now: the one use case of the API and the console.

    C7 order: end the consent and destroy every data key, then `commit` (the caller's transaction commit,
    `session.commit`: services never commit on their own), so every copy is unreadable before any blob is
    touched; then stop the live recordings and delete the blobs (flushed; a failed delete is retried later).
    """
    consent, receipts = await _destroy_data_keys(session=session, clock=clock, keyrings=keyrings, consents=consents,
                                                 actor=actor, resource=resource, consent_id=consent_id)
    await commit()  # the keys are gone before any blob is touched
    request_ids = [r.request_id for r in receipts]
    recorder.abandon(set(request_ids), IncompleteReason.ERASED)
    pending = await _delete_erased_blobs(session=session, clock=clock, stores=stores, request_ids=request_ids)
    bodies, digest = _receipts_digest(receipts)
    return ErasureReceipt(consent_id=consent.id, erased_at=clock.now(), recordings=len(receipts),
                          receipts=bodies, blobs_pending=pending, receipt_sha256=digest)


async def _destroy_data_keys(
    *, session: AsyncSession, clock: Clock, keyrings: RegionKeyrings, consents: ConsentCache, actor: Principal,
    resource: Resource, consent_id: str,
) -> tuple[Consent, list[ShredReceipt]]:
    """Erasure's first step, in the caller's transaction: end the consent and destroy the data key of every
    recording made under it (audited)."""
    consent = await require_consent(session=session, resource=resource, consent_id=consent_id)
    audit_actor = Actor.customer_admin(actor.subject)
    if consent.ended_at is None:
        await end_consent(session=session, clock=clock, consents=consents, consent=consent, actor=audit_actor,
                          ended_by=actor.subject, reason=ConsentEnding.ERASED, at=clock.now())
    rows = (await session.execute(
        select(Recording).where(Recording.consent_id == consent.id, Recording.shredded_at.is_(None))
        .order_by(Recording.started_at)
    )).scalars().all()
    detail: dict[str, object] = {"consent": consent.id}
    if rows:
        detail["request_ids"] = [r.request_id for r in rows][:1000]
    await append_entry(session=session, clock=clock, actor=audit_actor, action=AuditAction.CONSENT_ERASURE_REQUESTED,
                       subjects=Subjects(resource=resource.id), detail=detail)  # type: ignore[arg-type]
    receipts = [await shred_recording(session=session, clock=clock, keyrings=keyrings, recording=r,
                                      reason=ShredReason.ERASURE, actor=audit_actor) for r in rows]
    await session.flush()
    return consent, receipts


async def _delete_erased_blobs(
    *, session: AsyncSession, clock: Clock, stores: RegionRouter, request_ids: list[RequestId]
) -> list[RequestId]:
    """Erasure, step 2: delete the blobs; returns the request IDs whose delete must be retried."""
    pending = []
    for request_id in request_ids:
        recording = await session.get(Recording, request_id)
        if recording is None or recording.blob_deleted_at is not None:
            continue
        if await delete_blob(stores=stores, recording=recording):
            recording.blob_deleted_at = clock.now()
        else:
            pending.append(request_id)
    await session.flush()
    return pending


def _receipts_digest(receipts: list[ShredReceipt]) -> tuple[list[dict[str, object]], str]:
    bodies = [json.loads(r.to_json()) for r in receipts]
    canonical = json.dumps(bodies, sort_keys=True, separators=(",", ":")).encode()
    return bodies, hashlib.sha256(canonical).hexdigest()
