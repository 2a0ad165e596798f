"""The web console: server-rendered pages for engineers, managers, customer admins and auditors.

Wire it with one call after create_app: `include_console(app, settings)`.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from app.config import Settings
from app.console.auditor import build_auditor_router
from app.console.auth import (
    LOGIN_TTL,
    ConsoleState,
    MissingConsoleRole,
    NeedsSignIn,
    build_auth_router,
    current_session,
)
from app.console.customer import build_customer_router
from app.console.dev_login import build_dev_login_router
from app.console.engineer import build_engineer_router
from app.console.login_key import LoginKey
from app.console.manager import build_manager_router
from app.console.playback import build_playback_router
from app.console.security import ConsoleSecurityHeaders, CsrfRejected
from app.console.sessions import SaveTouchedSessions, SessionStore
from app.console.settings import ConsoleSettings
from app.console.templating import HERE, page
from app.deps import AppContext
from app.identity.routes import load_dev_issuer
from app.logs import get_logger

log = get_logger("voicelog.console")

__all__ = ["ConsoleSettings", "include_console"]


def include_console(app: FastAPI, settings: Settings, console: ConsoleSettings | None = None) -> bool:
    """Mount `/console` (and, with the dev issuer on, its sign-in form) on `app`; returns whether it did.

    `console` defaults to `settings.console` when Settings carries it, else to ConsoleSettings().
    """
    console = console or getattr(settings, "console", None) or ConsoleSettings()
    if not console.enabled:
        return False
    ctx: AppContext = app.state.ctx
    clock = ctx.clock
    app.state.console = ConsoleState(
        settings=console,
        sessions=SessionStore(session_factory=ctx.session_factory, kind="session",
                              idle=timedelta(minutes=console.session_idle_minutes),
                              absolute=timedelta(hours=console.session_max_hours), capacity=console.max_sessions),
        logins=SessionStore(session_factory=ctx.session_factory, kind="login", idle=LOGIN_TTL, absolute=LOGIN_TTL,
                            capacity=console.max_sessions),
        login_key=LoginKey(ctx.session_factory),
        dev_issuer=settings.identity.dev_issuer_enabled,
    )
    issuer = load_dev_issuer(settings.identity, settings.data_dir, clock=clock)
    if issuer is not None:
        app.include_router(build_dev_login_router(issuer, clock))
    app.add_middleware(ConsoleSecurityHeaders)
    app.add_middleware(SaveTouchedSessions)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(build_auth_router(clock))
    app.include_router(build_engineer_router(clock))
    app.include_router(build_manager_router(clock))
    app.include_router(build_customer_router(clock))
    app.include_router(build_auditor_router(clock))
    app.include_router(build_playback_router(clock))

    @app.get("/console", include_in_schema=False)
    async def console_home(request: Request) -> Response:
        session = await current_session(request)
        if session is None:
            return page(request, "signed_out.html", None, message=None)
        return page(request, "home.html", session)

    async def sign_in_first(request: Request, _exc: Exception) -> Response:
        if request.method == "GET":
            return RedirectResponse(f"/console/login?{urlencode({'next': request.url.path})}", status_code=303)
        return page(request, "signed_out.html", None, status_code=401,
                    message="Your session ended. Sign in again and repeat the action.")

    async def refused(request: Request, exc: Exception) -> Response:
        session = await current_session(request)
        return page(request, "refused.html", session, status_code=403, error=exc)

    app.add_exception_handler(NeedsSignIn, sign_in_first)
    app.add_exception_handler(MissingConsoleRole, refused)
    app.add_exception_handler(CsrfRejected, refused)
    log.info("console.enabled", dev_sign_in=issuer is not None)
    return True
