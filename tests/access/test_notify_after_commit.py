"""The team's webhook hears of an access event only once the decision's transaction has committed."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.models import AccessRequest
from app.access.notify import Notifier, notify_team
from app.access.states import AccessRequestState


class HeardEvents(Notifier):
    """A notifier with no webhooks that keeps what it was asked to send."""

    def __init__(self) -> None:
        super().__init__([], CollectorRegistry())
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, team: str | None, event: str, payload: dict[str, Any]) -> None:
        self.events.append((event, payload))


def _grant() -> AccessRequest:
    return AccessRequest(id="g" * 32, requester="alice", requester_team_id=None, ticket_id="t-1",
                         state=AccessRequestState.APPROVED, expires_at=None)


async def test_a_rolled_back_decision_is_never_announced(db_session: AsyncSession) -> None:
    notifier = HeardEvents()
    await db_session.execute(text("SELECT 1"))  # the decision's own statements begin the transaction
    await notify_team(session=db_session, notifier=notifier, row=_grant(), event="access.approved")
    assert notifier.events == []
    await db_session.rollback()
    await db_session.commit()
    assert notifier.events == []


async def test_the_team_hears_once_the_decision_is_committed(db_session: AsyncSession) -> None:
    notifier = HeardEvents()
    await db_session.execute(text("SELECT 1"))
    await notify_team(session=db_session, notifier=notifier, row=_grant(), event="access.revoked")
    assert notifier.events == []
    await db_session.commit()
    assert [event for event, _ in notifier.events] == ["access.revoked"]
    assert notifier.events[0][1]["state"] == "approved"
    await db_session.commit()
    assert len(notifier.events) == 1  # told once
