"""Gathering what `grant_situation` needs for access request rows, for the API, the console and the customer
decision alike: the named recordings and their consents are looked up only while a row's own state is live,
each once per call (primary-key gets through capture and tickets, never their tables)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.grant_status import GrantRecord, GrantSituation, RecordingFacts, grant_situation, needs_facts
from app.access.models import AccessRequest, AccessRequestItem
from app.capture.service import find_recording
from app.request_id import RequestId
from app.tickets.service import consent_facts, ticket_view


def grant_record(row: AccessRequest, request_ids: Sequence[RequestId] = ()) -> GrantRecord:
    return GrantRecord(
        id=row.id, ticket_id=row.ticket_id, state=row.state, created_at=row.created_at, expires_at=row.expires_at,
        revoked=row.revoked_at is not None, needs_customer_approval=row.needs_customer_approval,
        customer_approved=row.customer_approved, request_ids=tuple(request_ids))


class _Facts:
    """Per call: each recording, consent and ticket looked up at most once."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.recordings: dict[RequestId, RecordingFacts | None] = {}
        self.tickets: dict[str, bool] = {}

    async def recording(self, request_id: RequestId) -> RecordingFacts | None:
        if request_id not in self.recordings:
            row = await find_recording(session=self.session, request_id=request_id)
            facts = None
            if row is not None:
                consent = await consent_facts(session=self.session, consent_id=row.consent_id)
                facts = RecordingFacts(
                    request_id=row.request_id, ticket_id=row.ticket_id, started_at=row.started_at,
                    bucket_start=row.bucket_start, shredded=row.wrapped_dek is None,
                    consent_ticket_id=consent.ticket_id if consent else None,
                    consent_ended=consent.ended if consent else True)
            self.recordings[request_id] = facts
        return self.recordings[request_id]

    async def ticket_open(self, ticket_id: str) -> bool:
        if ticket_id not in self.tickets:
            ticket = await ticket_view(session=self.session, ticket_id=ticket_id)
            self.tickets[ticket_id] = ticket is not None and ticket.is_open
        return self.tickets[ticket_id]


async def grant_situations(
    *, session: AsyncSession, rows: Sequence[AccessRequest], now: datetime, retention: timedelta,
) -> dict[str, GrantSituation]:
    """Each row's situation, by access request ID."""
    facts = _Facts(session)
    out: dict[str, GrantSituation] = {}
    for row in rows:
        record = grant_record(row)
        recordings: dict[RequestId, RecordingFacts] = {}
        ticket_open = False
        if needs_facts(record, now):
            ids = (await session.execute(select(AccessRequestItem.request_id)
                                         .where(AccessRequestItem.access_request_id == row.id)
                                         .order_by(AccessRequestItem.request_id))).scalars().all()
            record = grant_record(row, ids)
            for rid in ids:
                found = await facts.recording(rid)
                if found is not None:
                    recordings[rid] = found
            ticket_open = await facts.ticket_open(row.ticket_id)
        out[row.id] = grant_situation(now=now, grant=record, recordings=recordings, ticket_open=ticket_open,
                                      retention=retention)
    return out


async def grant_situation_of(
    *, session: AsyncSession, row: AccessRequest, now: datetime, retention: timedelta,
) -> GrantSituation:
    return (await grant_situations(session=session, rows=[row], now=now, retention=retention))[row.id]
