"""The web console: server-rendered pages for engineers, managers, customer admins and auditors.

`build_console_state` makes its parts for the AppContext; `include_console(app, ctx)` mounts it.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.console import auditor, auth, customer, engineer, manager, playback
from app.console.auth import LOGIN_TTL, ConsoleState, MissingConsoleRole, NeedsSignIn, current_session
from app.console.dev_login import build_dev_login_router
from app.console.login_key import LoginKey
from app.console.security import ConsoleSecurityHeaders, CsrfRejected
from app.console.sessions import SaveTouchedSessions, SessionStore
from app.console.settings import ConsoleSettings
from app.console.templating import HERE, page
from app.context import AppContext
from app.logs import get_logger

log = get_logger("voicelog.console")

__all__ = ["ConsoleSettings", "build_console_state", "include_console"]


def build_console_state(settings: Settings, session_factory: async_sessionmaker[AsyncSession]) -> ConsoleState | None:
    """The console's parts (session stores, login key), or None when `settings.console` switches it off."""
    console = settings.console
    if not console.enabled:
        return None
    return ConsoleState(
        settings=console,
        sessions=SessionStore(session_factory=session_factory, kind="session",
                              idle=timedelta(minutes=console.session_idle_minutes),
                              absolute=timedelta(hours=console.session_max_hours), capacity=console.max_sessions),
        logins=SessionStore(session_factory=session_factory, kind="login", idle=LOGIN_TTL, absolute=LOGIN_TTL,
                            capacity=console.max_sessions),
        login_key=LoginKey(session_factory),
        dev_issuer=settings.identity.dev_issuer_enabled,
    )


def include_console(app: FastAPI, ctx: AppContext) -> bool:
    """Mount `/console` (and, with the dev issuer on, its sign-in form) on `app`; returns whether it did."""
    if ctx.console is None:
        return False
    if ctx.dev_issuer is not None:
        app.include_router(build_dev_login_router(ctx.dev_issuer, ctx.clock, ctx.settings.saw))
    app.add_middleware(ConsoleSecurityHeaders)
    app.add_middleware(SaveTouchedSessions)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
    for pages in (auth, engineer, manager, customer, auditor, playback):
        app.include_router(pages.router)

    @app.get("/console", include_in_schema=False)
    async def console_home(request: Request) -> Response:
        session = await current_session(request, ctx)
        if session is None:
            return page(request, "signed_out.html", None, message=None)
        return page(request, "home.html", session)

    async def sign_in_first(request: Request, _exc: Exception) -> Response:
        if request.method == "GET":
            return RedirectResponse(f"/console/login?{urlencode({'next': request.url.path})}", status_code=303)
        return page(request, "signed_out.html", None, status_code=401,
                    message="Your session ended. Sign in again and repeat the action.")

    async def refused(request: Request, exc: Exception) -> Response:
        session = await current_session(request, ctx)
        return page(request, "refused.html", session, status_code=403, error=exc)

    app.add_exception_handler(NeedsSignIn, sign_in_first)
    app.add_exception_handler(MissingConsoleRole, refused)
    app.add_exception_handler(CsrfRejected, refused)
    log.info("console.enabled", dev_sign_in=ctx.dev_issuer is not None)
    return True
