"""The access job the scheduler runs every minute: expire grants, lapse old requests, warn before expiry."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.access import service
from app.access.routes import AccessContext, notify
from app.clock import Clock


async def run_access_job(*, session_factory: async_sessionmaker[AsyncSession], clock: Clock,
                         access: AccessContext) -> dict[str, int]:
    async with session_factory() as session:
        warned = await service.expiring_soon(session=session, clock=clock)
        expired, lapsed = await service.expire_and_lapse(session=session, clock=clock)
        await session.commit()
        for row in warned:
            await notify(session, access, row, "access.expiring_soon")
        for row in expired:
            await notify(session, access, row, "access.expired")
    return {"warned": len(warned), "expired": len(expired), "lapsed": len(lapsed)}
