"""Ending an engineer's grants when the facts they rest on change (unassigned, moved, deactivated, role lost).

Bookkeeping and notification only: the read check (`decide_read`, C5) looks at the present assignment,
team, manager relation, roles and active flag at every read, so a grant this misses still does not read.
It lives apart from `app.access.service` so it imports neither the tickets nor the staff service; those
services reach it through identity's `GrantEnder` protocol (`app.access.grant_ender` implements it), in their
own transaction. Why a grant ended, `GrantEnding`, is identity's.
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.models import AccessRequest
from app.access.states import AccessRequestState
from app.audit.actions import Actor, AuditAction, Subjects
from app.audit.service import append_entry
from app.clock import Clock
from app.identity.staff.grant_endings import GrantEnding

_ENDED = "voicelog.access.ended_grants"  # session.info key: rows ended in this transaction, to be notified


async def end_grants_of(
    *, session: AsyncSession, clock: Clock, actor: Actor, engineer: str, reason: GrantEnding,
    ticket_id: str | None = None,
) -> list[AccessRequest]:
    """Revoke the engineer's live grants and pending requests (on one ticket, or all), each audited as
    `access.revoked` with `reason`. Returns the rows; they are also kept for `take_ended_grants`."""
    now = clock.now()
    query = (select(AccessRequest)
             .where(AccessRequest.requester == engineer, AccessRequest.revoked_at.is_(None),
                    or_(AccessRequest.state == AccessRequestState.PENDING,
                        (AccessRequest.state == AccessRequestState.APPROVED) & (AccessRequest.expires_at > now)))
             .order_by(AccessRequest.created_at).with_for_update())
    if ticket_id is not None:
        query = query.where(AccessRequest.ticket_id == ticket_id)
    rows = list((await session.execute(query)).scalars())
    for row in rows:
        row.state, row.revoked_at, row.revoked_by = AccessRequestState.REVOKED, now, actor.id
        row.revoke_reason = reason.value
        await append_entry(session=session, clock=clock, actor=actor, action=AuditAction.ACCESS_REVOKED,
                           subjects=Subjects(grant=row.id, ticket=row.ticket_id), detail={"reason": reason.value})
    await session.flush()
    session.info.setdefault(_ENDED, []).extend(rows)
    return rows


def take_ended_grants(session: AsyncSession) -> list[AccessRequest]:
    """The grants `end_grants_of` ended in this session since the last call (for the team's webhook)."""
    rows: list[AccessRequest] = session.info.pop(_ENDED, [])
    return rows
