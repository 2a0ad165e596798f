"""FastAPI dependencies as `Annotated` aliases over the one `AppContext` (app/context.py)."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.clock import Clock
from app.config import Settings
from app.context import ContextDep
from app.db import is_database_outage
from app.errors import AppError, DatabaseUnavailable, Forbidden, Unauthorized
from app.transaction import discard_after_commit

__all__ = ["ContextDep"]  # re-exported: routes import every dependency alias from here


def get_settings(ctx: ContextDep) -> Settings:
    return ctx.settings


def get_clock(ctx: ContextDep) -> Clock:
    return ctx.clock


async def get_session(ctx: ContextDep) -> AsyncIterator[AsyncSession]:
    """One transaction per request, committed before the response is sent (scope="function"); an error rolls
    it back, except one that keeps what was written (an audited refusal). Steps registered with
    `app.transaction.after_commit` run right after the commit. Its pool bounds every database wait: an
    outage answers 503 `database_unavailable` with Retry-After, within the request timeout."""
    async with ctx.request_session_factory() as session:
        try:
            yield session
            await session.commit()
        except AppError as error:
            await settle_refusal(session, error)
            raise
        except Exception as error:
            if not is_database_outage(error):
                await roll_back(session)
                raise
            # A refused, dropped or silent database: no round trip to roll back (it would wait again).
            await session.invalidate()
            discard_after_commit(session)
            raise DatabaseUnavailable("Try again shortly.") from error
        except BaseException:
            await roll_back(session)
            raise


async def settle_refusal(session: AsyncSession, error: AppError) -> None:
    """The request's transaction after a refusal, as `get_session` settles it: an audited refusal
    (`keeps_transaction`) keeps what it wrote, any other is rolled back with the steps waiting on its commit.
    A front door that answers the refusal itself (the console's message and redirect) calls this, so the
    rule is written once."""
    if error.keeps_transaction:
        await session.commit()
    else:
        await roll_back(session)


async def roll_back(session: AsyncSession) -> None:
    """Roll back and drop the steps waiting on the commit that will not happen (also the console's, for input
    it refuses before any use case ran, e.g. an invalid form)."""
    await session.rollback()
    discard_after_commit(session)


SettingsDep = Annotated[Settings, Depends(get_settings)]
ClockDep = Annotated[Clock, Depends(get_clock)]
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


class AdminDisabled(Forbidden):
    code = "admin_disabled"
    title = "The admin API is not configured"


def require_admin(request: Request, ctx: ContextDep) -> None:
    """Deny by default: no configured token closes /admin/*; the comparison is constant-time."""
    if ctx.admin_token is None:
        raise AdminDisabled("Set VOICELOG_ADMIN_TOKEN to use the admin API.")
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized("Send the admin token as `Authorization: Bearer <token>`.")
    if not hmac.compare_digest(presented.encode(), ctx.admin_token.encode()):
        raise Unauthorized("The admin token is not valid.")


AdminDep = Annotated[None, Depends(require_admin)]
