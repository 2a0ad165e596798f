"""Console sign-in: OIDC authorization code with PKCE, verified by the app's own token verifier.

The browser holds two cookies, both HttpOnly and Secure: the session (SameSite=Strict, a random id only)
and, for the few minutes of a sign-in, the login (SameSite=Lax, so that it comes back on the redirect from a
real issuer on another site), which carries the sign-in's state, PKCE verifier and nonce sealed under a key
derived from its own random id and the replicas' login key: no server state for a sign-in that has not
come back, and only a replica can mint one. The callback records
the sign-in as used (once, across replicas) and answers with a page that moves on by itself, so the first
request that carries the new Strict cookie is a same-site one.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.console.dev_login import s256
from app.console.login_key import LoginKey
from app.console.security import checked_form, public_origin
from app.console.sessions import (
    MAX_LOGIN_COOKIE,
    ConsoleSession,
    PendingLogin,
    SessionStore,
    open_pending_login,
    seal_pending_login,
    touched,
)
from app.console.settings import ConsoleSettings
from app.console.templating import page
from app.context import AppContext, ContextDep
from app.errors import AppError, Forbidden, Unauthorized
from app.identity.principal import STAFF_ROLES, MissingRole, Principal, Role, TokenVerifier
from app.identity.settings import DEV_ISSUER_PATH
from app.identity.staff.service import StaffInactive, StaffPrincipal, UnknownStaff, authorize_staff
from app.logs import get_logger

log = get_logger("voicelog.console")

LOGIN_TTL = timedelta(minutes=10)
CLOCK_SKEW = timedelta(minutes=1)
TOKEN_TIMEOUT_S = 10.0

@dataclass
class ConsoleState:
    settings: ConsoleSettings
    sessions: SessionStore
    logins: SessionStore  # used-once markers of sign-ins that came back
    login_key: LoginKey
    dev_issuer: bool

    @property
    def session_cookie(self) -> str:
        return "__Host-voicelog-console" if self.settings.cookie_secure else "voicelog-console"

    @property
    def login_cookie(self) -> str:
        return "__Host-voicelog-login" if self.settings.cookie_secure else "voicelog-login"

def console_state(ctx: AppContext) -> ConsoleState:
    """The console's parts; its routes are mounted only when the context has them."""
    if ctx.console is None:
        raise RuntimeError("the console is switched off in this context")
    return ctx.console

class NeedsSignIn(Unauthorized):
    code = "console_sign_in"
    title = "Sign in to use the console"

class MissingConsoleRole(Forbidden):
    code = "missing_role"
    title = "Your identity does not have the role this page needs"

async def current_session(request: Request, ctx: AppContext) -> ConsoleSession | None:
    """The signed-in session, its token re-verified on every request (expiry follows the token and the clock).

    Read once per request (an error page rendered after the handler sees the same session), and saved back
    before the response starts (`SaveTouchedSessions`).
    """
    if hasattr(request.state, "console_session"):
        cached: ConsoleSession | None = request.state.console_session
        return cached
    request.state.console_session = None
    state = console_state(ctx)
    session = await state.sessions.get(request.cookies.get(state.session_cookie), ctx.clock.now())
    if session is None or session.token is None:
        return None
    verifier = ctx.token_verifier
    try:
        if verifier is None:
            raise NeedsSignIn()
        session.principal = await verifier.verify(session.token)
    except AppError:
        await state.sessions.drop(session)
        return None
    touched(request, state.sessions, session)
    request.state.console_session = session
    return session

async def signed_in(request: Request, ctx: AppContext, *roles: Role,
                    db: AsyncSession) -> tuple[ConsoleSession, Principal]:
    """The session and principal, holding at least one of `roles` (any role when none is named).

    Staff roles are checked exactly as the API's `require_staff` does (C5: token AND active staff record),
    in the request's transaction `db`; `customer_admin` and `ticketing` from the token alone. A page never
    asks for both kinds at once.
    """
    session = await current_session(request, ctx)
    if session is None or session.principal is None:
        raise NeedsSignIn()
    if roles and set(roles) <= STAFF_ROLES:
        await console_staff(db, session.principal, *roles)
    elif roles and set(roles) & STAFF_ROLES:
        raise ValueError("signed_in takes staff roles or token-only roles, not both")
    elif roles and not any(session.principal.has(r) for r in roles):
        raise MissingConsoleRole(f"This page needs one of the roles: {', '.join(r.value for r in roles)}.")
    return session, session.principal

async def console_staff(db: AsyncSession, principal: Principal, *roles: Role) -> StaffPrincipal:
    """`authorize_staff`, the API's one token-AND-record check, with its refusal shown as the console's."""
    try:
        return await authorize_staff(session=db, principal=principal, roles=roles)
    except (MissingRole, UnknownStaff, StaffInactive) as refused:
        raise MissingConsoleRole(refused.detail) from refused

def set_cookie(response: Response, state: ConsoleState, name: str, value: str, *, max_age: int,
               same_site: str) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", secure=state.settings.cookie_secure,
                        httponly=True, samesite=same_site)  # type: ignore[arg-type]

def _safe_next(value: str | None) -> str:
    """Only a path inside the console (never `//host` or a scheme): no open redirect after sign-in."""
    if value and value.startswith("/console") and not value.startswith("//") and "\\" not in value:
        return value[:512]
    return "/console"

def _redirect_uri(request: Request, ctx: AppContext) -> str:
    """`<public_url>/console/callback`; unset, the origin the browser used (through a trusted proxy such as
    the SAW's nginx, its forwarded scheme and host: the local SAW keeps its https and port)."""
    settings = console_state(ctx).settings
    if settings.public_url:
        return f"{settings.public_url.rstrip('/')}/console/callback"
    return f"{public_origin(request, ctx.settings.saw.trusted_proxies)}/console/callback"

def _authorization_endpoint(state: ConsoleState) -> str:
    if state.dev_issuer:
        return f"{DEV_ISSUER_PATH}/authorize"
    endpoint = state.settings.authorization_endpoint
    if endpoint is None:
        raise NeedsSignIn("The console has no authorization endpoint configured (VOICELOG_CONSOLE__*).")
    return endpoint

async def _exchange(request: Request, state: ConsoleState, login: PendingLogin, code: str) -> str:
    """Trade the code and the PKCE verifier for an access token at the issuer's token endpoint."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": login.redirect_uri,
            "client_id": state.settings.client_id, "code_verifier": login.code_verifier}
    if state.settings.client_secret is not None:
        form["client_secret"] = state.settings.client_secret.get_secret_value()
    if state.dev_issuer:  # in-process, like the dev verifier's JWKS fetch: the service never calls itself
        transport = httpx.ASGITransport(app=request.app)
        client = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=TOKEN_TIMEOUT_S)
        url = f"{DEV_ISSUER_PATH}/oauth2/token"
    elif state.settings.token_endpoint is not None:
        client, url = httpx.AsyncClient(timeout=TOKEN_TIMEOUT_S), state.settings.token_endpoint
    else:
        raise NeedsSignIn("The console has no token endpoint configured.")
    async with client:
        response = await client.post(url, data=form, headers={"accept": "application/json"})
    token = response.json().get("access_token") if response.status_code == 200 else None
    if not isinstance(token, str):
        log.info("console.sign_in.exchange_refused", status=response.status_code)
        raise NeedsSignIn("The issuer refused the sign-in code.")
    return token

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("/login")
async def login(request: Request, ctx: ContextDep) -> Response:
    state = console_state(ctx)
    verifier = secrets.token_urlsafe(64)
    login = PendingLogin(state=secrets.token_urlsafe(32), code_verifier=verifier, nonce=secrets.token_urlsafe(24),
                         redirect_uri=_redirect_uri(request, ctx),
                         next_path=_safe_next(request.query_params.get("next")), created=ctx.clock.now())
    query = urlencode({"response_type": "code", "client_id": state.settings.client_id,
                       "redirect_uri": login.redirect_uri, "scope": state.settings.scope,
                       "state": login.state, "nonce": login.nonce,
                       "code_challenge": s256(verifier), "code_challenge_method": "S256"})
    response = RedirectResponse(f"{_authorization_endpoint(state)}?{query}", status_code=303)
    server_key = await state.login_key.get()
    cookie = seal_pending_login(login, server_key)
    if len(cookie) > MAX_LOGIN_COOKIE:  # a long `next` of many-byte characters: sign in, go home
        login.next_path = "/console"
        cookie = seal_pending_login(login, server_key)
    set_cookie(response, state, state.login_cookie, cookie, max_age=int(LOGIN_TTL.total_seconds()),
               same_site="lax")
    return response


@router.get("/callback")
async def callback(request: Request, ctx: ContextDep) -> Response:
    state = console_state(ctx)
    pending = open_pending_login(request.cookies.get(state.login_cookie), await state.login_key.get())
    presented = request.query_params.get("state", "")
    code = request.query_params.get("code")
    # Only a replica mints login cookies; even so, nothing in one is taken on trust.
    if (pending is None or code is None
            or not secrets.compare_digest(presented.encode(), pending[1].state.encode())
            or pending[1].redirect_uri != _redirect_uri(request, ctx)):
        return page(request, "signed_out.html", None, status_code=400,
                    message="That sign-in did not start here or has expired. Please sign in again.")
    login_id, login = pending
    if not -CLOCK_SKEW <= ctx.clock.now() - login.created <= LOGIN_TTL:  # begun on another replica's clock
        return page(request, "signed_out.html", None, status_code=400, message="The sign-in expired.")
    if not await state.logins.use_once(login_id, ctx.clock.now(), until=login.created + LOGIN_TTL + CLOCK_SKEW):
        return page(request, "signed_out.html", None, status_code=400,
                    message="That sign-in was already used. Please sign in again.")
    try:
        token = await _exchange(request, state, login, code)
        verifier: TokenVerifier | None = ctx.token_verifier
        if verifier is None:
            raise NeedsSignIn("No identity issuer is configured.")
        principal = await verifier.verify(token)
        nonce = principal.claims.get("nonce")
        if nonce is not None and not secrets.compare_digest(str(nonce).encode(), login.nonce.encode()):
            raise NeedsSignIn("The token was issued for another sign-in.")
    except AppError as refused:  # never a redirect loop back to the issuer
        return page(request, "signed_out.html", None, status_code=401, message=f"Sign-in failed: {refused.detail}")
    session = await state.sessions.sign_in(principal, token, ctx.clock.now())
    log.info("console.signed_in", roles=sorted(r.value for r in principal.roles))
    response = page(request, "continue.html", None, next_path=_safe_next(login.next_path))
    set_cookie(response, state, state.session_cookie, session.id,
               max_age=int(state.settings.session_max_hours * 3600), same_site="strict")
    response.delete_cookie(state.login_cookie, path="/", secure=state.settings.cookie_secure, httponly=True,
                           samesite="lax")
    return response


@router.post("/logout")
async def logout(request: Request, ctx: ContextDep) -> Response:
    state = console_state(ctx)
    session = await state.sessions.get(request.cookies.get(state.session_cookie), ctx.clock.now())
    if session is not None:
        await checked_form(request, session)
        await state.sessions.drop(session)
    response = page(request, "signed_out.html", None, message="You are signed out.")
    response.delete_cookie(state.session_cookie, path="/", secure=state.settings.cookie_secure, httponly=True,
                           samesite="strict")
    return response

