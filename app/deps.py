"""FastAPI dependencies as `Annotated` aliases; the app's parts live on `app.state.ctx`."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.clock import Clock
from app.config import Settings
from app.errors import Forbidden, Unauthorized
from app.identity.principal import TokenVerifier
from app.metrics import Metrics


@dataclass
class AppContext:
    """The parts create_app wires together; passed down explicitly, never read from a global."""

    settings: Settings
    clock: Clock
    engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]
    metrics: Metrics
    admin_token: str | None
    token_verifier: TokenVerifier | None = None


def get_context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


ContextDep = Annotated[AppContext, Depends(get_context)]


def get_settings(ctx: ContextDep) -> Settings:
    return ctx.settings


def get_clock(ctx: ContextDep) -> Clock:
    return ctx.clock


async def get_session(ctx: ContextDep) -> AsyncIterator[AsyncSession]:
    """One transaction per request, committed before the response is sent (scope="function")."""
    async with ctx.session_factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


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
