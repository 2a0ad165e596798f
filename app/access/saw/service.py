"""The SAW registry: register a device for one person, revoke it. Both audited in the same transaction (C6)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.saw.models import Saw
from app.access.saw.schemas import SawRegister
from app.audit.actions import Actor, AuditAction, Subjects
from app.audit.service import append_entry
from app.clock import Clock
from app.errors import Conflict, InvalidInput, NotFound
from app.identity.staff.service import get_staff, refuse_self_administration
from app.logs import get_logger

log = get_logger("voicelog.access.saw")


class SawNotFound(NotFound):
    code = "saw_not_found"
    title = "No such secure access workstation"


class SawExists(Conflict):
    code = "saw_exists"
    title = "This certificate is already registered (a revoked certificate is never registered again)"


class SawAlreadyRevoked(Conflict):
    code = "saw_revoked"
    title = "The secure access workstation is already revoked"


class SawOwnerInvalid(InvalidInput):
    code = "saw_owner_invalid"
    title = "A SAW is registered to an active staff member only"


async def register_saw(*, session: AsyncSession, clock: Clock, actor: Actor, data: SawRegister) -> Saw:
    """Bind a client certificate to one active staff member. Admins never register their own devices."""
    refuse_self_administration(actor, data.owner)
    owner = await get_staff(session=session, subject=data.owner)
    if owner is None or not owner.active:
        raise SawOwnerInvalid()
    if await find_saw_by_fingerprint(session=session, cert_sha256=data.fingerprint) is not None:
        raise SawExists()
    saw = Saw(cert_sha256=data.fingerprint, owner_subject=owner.subject, label=data.label,
              registered_at=clock.now(), registered_by=actor.id)
    session.add(saw)
    try:
        await session.flush()
    except IntegrityError:
        raise SawExists() from None
    await append_entry(session=session, clock=clock, actor=actor, action=AuditAction.SAW_REGISTERED,
                       subjects=Subjects(saw=saw.id), detail={"owner": owner.subject, "device": saw.label})
    log.info("saw.registered", saw=saw.id, owner=owner.subject)
    return saw


async def revoke_saw(*, session: AsyncSession, clock: Clock, actor: Actor, saw_id: str, reason: str) -> Saw:
    """Revoke at once: the next request from the device is no longer from a SAW. Also revoke its
    certificate at the CA and publish the CRL, so nginx refuses the device before voicelog sees it."""
    saw = await require_saw(session=session, saw_id=saw_id)
    if saw.revoked:
        raise SawAlreadyRevoked()
    saw.revoked_at, saw.revoked_by, saw.revoke_reason = clock.now(), actor.id, reason
    await session.flush()
    await append_entry(session=session, clock=clock, actor=actor, action=AuditAction.SAW_REVOKED,
                       subjects=Subjects(saw=saw.id), detail={"reason": reason})
    log.info("saw.revoked", saw=saw.id)
    return saw


async def get_saw(*, session: AsyncSession, saw_id: str) -> Saw | None:
    return await session.get(Saw, saw_id)


async def require_saw(*, session: AsyncSession, saw_id: str) -> Saw:
    saw = await get_saw(session=session, saw_id=saw_id)
    if saw is None:
        raise SawNotFound()
    return saw


async def find_saw_by_fingerprint(*, session: AsyncSession, cert_sha256: str) -> Saw | None:
    """The SAW registered with this certificate fingerprint (revoked or not)."""
    result = await session.execute(select(Saw).where(Saw.cert_sha256 == cert_sha256))
    return result.scalar_one_or_none()


async def list_saws(*, session: AsyncSession, owner: str | None = None, include_revoked: bool = True
                    ) -> Sequence[Saw]:
    query = select(Saw).order_by(Saw.registered_at, Saw.id)
    if owner is not None:
        query = query.where(Saw.owner_subject == owner)
    if not include_revoked:
        query = query.where(Saw.revoked_at.is_(None))
    return (await session.execute(query)).scalars().all()
