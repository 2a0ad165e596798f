"""What a staff or ticket change needs of access: the person's grants end with the facts they rest on (C5).

Access sits above identity and tickets (it reads the staff directory and the ticket assignments), so they do
not import it: identity owns this protocol, access implements it (`app.access.grant_ender`), and
`app.wiring.build_context` puts the implementation on the context (`AppContext.grant_ender`), as audit takes
its auditor check through `AuditorCheck`. Grants end in the caller's transaction; the teams are told after
the commit (`notify_ended`), so a rolled-back change is never announced.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.audit.actions import Actor
    from app.clock import Clock


class GrantEnding(StrEnum):
    """Why a grant ended without anyone revoking it (the `access.revoked` entry's `reason`)."""

    UNASSIGNED = "engineer_unassigned"
    MOVED = "engineer_moved"
    DEACTIVATED = "engineer_deactivated"
    ROLE_REMOVED = "engineer_role_removed"


class GrantEnder(Protocol):
    """Ends an engineer's grants when a fact they rest on changes, and tells their teams once committed."""

    async def end_grants_of(self, *, session: AsyncSession, clock: Clock, actor: Actor, engineer: str,
                            reason: GrantEnding, ticket_id: str | None = None) -> None:
        """Revoke the engineer's live grants and pending requests (on one ticket, or all) in `session`'s
        transaction, each audited as `access.revoked` with `reason`."""
        ...

    async def notify_ended(self, *, session: AsyncSession) -> None:
        """Tell the teams of every grant this transaction ended, once it has committed."""
        ...
