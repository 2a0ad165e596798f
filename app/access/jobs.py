"""The access job the scheduler runs every minute: expire grants, lapse old requests, warn before expiry."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.access import service
from app.access.context import AccessContext
from app.access.notify import notify_team
from app.clock import Clock


async def run_access_job(*, session_factory: async_sessionmaker[AsyncSession], clock: Clock,
                         access: AccessContext) -> dict[str, int]:
    async with session_factory() as session:
        warned = await service.expiring_soon(session=session, clock=clock)
        expired, lapsed = await service.expire_and_lapse(session=session, clock=clock)
        for row in warned:
            await notify_team(session=session, notifier=access.notifier, row=row, event="access.expiring_soon")
        for row in expired:
            await notify_team(session=session, notifier=access.notifier, row=row, event="access.expired")
        await session.commit()  # the team hears of each once this is committed
    return {"warned": len(warned), "expired": len(expired), "lapsed": len(lapsed)}
