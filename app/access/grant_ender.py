"""Access's side of identity's `GrantEnder`: a staff or ticket change ends grants without importing access.

`app.wiring.build_context` puts one `AccessGrantEnder` on the context (`AppContext.grant_ender`); the staff and
ticket services take it as a keyword argument and their routes through `GrantEnderDep`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.access.endings import end_grants_of
from app.access.notify import Notifier, notify_ended_grants
from app.audit.actions import Actor
from app.clock import Clock
from app.identity.staff.grant_endings import GrantEnding


@dataclass(frozen=True)
class AccessGrantEnder:
    """Ends grants in the caller's transaction (`end_grants_of`); tells the teams' webhooks after its commit."""

    notifier: Notifier

    async def end_grants_of(self, *, session: AsyncSession, clock: Clock, actor: Actor, engineer: str,
                            reason: GrantEnding, ticket_id: str | None = None) -> None:
        await end_grants_of(session=session, clock=clock, actor=actor, engineer=engineer, reason=reason,
                            ticket_id=ticket_id)

    async def notify_ended(self, *, session: AsyncSession) -> None:
        await notify_ended_grants(session=session, notifier=self.notifier)
