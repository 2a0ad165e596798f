"""Access decisions as use cases, the same for the API and the console: each state change (audited in the
caller's transaction, C5, C6), then the requester's team told once that transaction has committed."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.access import service
from app.access.models import AccessRequest
from app.access.notify import Notifier, notify_team
from app.access.service import NewAccessRequest, Person, StaffDirectory
from app.clock import Clock
from app.errors import InvalidInput


async def request_access(*, session: AsyncSession, clock: Clock, notifier: Notifier, actor: Person,
                         data: NewAccessRequest) -> AccessRequest:
    row = await service.create_access_request(session=session, clock=clock, actor=actor, data=data)
    await notify_team(session=session, notifier=notifier, row=row, event="access.requested")
    return row


async def approve_access(*, session: AsyncSession, clock: Clock, directory: StaffDirectory, notifier: Notifier,
                         access_request_id: str, actor: Person, duration: timedelta | None) -> AccessRequest:
    row = await service.approve(session=session, clock=clock, directory=directory,
                                access_request_id=access_request_id, actor=actor, duration=duration)
    await notify_team(session=session, notifier=notifier, row=row, event="access.approved")
    return row


async def deny_access(*, session: AsyncSession, clock: Clock, directory: StaffDirectory, notifier: Notifier,
                      access_request_id: str, actor: Person, reason: str) -> AccessRequest:
    if not reason.strip():
        raise InvalidInput("A denial needs a reason.")
    row = await service.deny(session=session, clock=clock, directory=directory,
                             access_request_id=access_request_id, actor=actor, reason=reason.strip())
    await notify_team(session=session, notifier=notifier, row=row, event="access.denied")
    return row


async def revoke_access(*, session: AsyncSession, clock: Clock, directory: StaffDirectory, notifier: Notifier,
                        access_request_id: str, actor: Person, reason: str) -> AccessRequest:
    row = await service.revoke(session=session, clock=clock, directory=directory,
                               access_request_id=access_request_id, actor=actor, reason=reason)
    await notify_team(session=session, notifier=notifier, row=row, event="access.revoked")
    return row


async def extend_access(*, session: AsyncSession, clock: Clock, access_request_id: str, actor: Person,
                        duration: timedelta, justification: str) -> AccessRequest:
    """A new access request for more time; the team's webhook is not told of it (its documented events are
    requested, approved, denied, revoked, expiring soon and expired, and an extension never was one)."""
    return await service.extend(session=session, clock=clock, access_request_id=access_request_id,
                                actor=actor, duration=duration, justification=justification)


async def customer_decide_access(*, session: AsyncSession, clock: Clock, access_request_id: str, actor: str,
                                 resource_id: str, approve: bool, retention: timedelta) -> AccessRequest:
    """Customer Lockbox; the team's webhook is not told (the customer's verdict has no event of its own)."""
    return await service.customer_decide(session=session, clock=clock, access_request_id=access_request_id,
                                         actor=actor, resource_id=resource_id, approve=approve,
                                         retention=retention)
