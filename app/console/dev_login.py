"""The dev issuer's authorization-code flow (PKCE, S256 only) for the console: laptop and tests only.

`GET /dev/oidc/authorize` shows a form (subject, roles, tenant) instead of a real sign-in; its POST redirects
back with a one-time code; `POST /dev/oidc/oauth2/token` trades the code and the PKCE verifier for an access
token signed by the dev key, which the console verifies with the app's real token verifier. Mounted only
when the dev issuer is enabled; like the dev token endpoint, it answers loopback browsers only (and, with the
local development SAW, a browser on this machine through that SAW's nginx).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from app.access.saw.settings import SawSettings
from app.access.saw.trust import is_trusted_peer
from app.clock import Clock
from app.console.security import first, public_origin, read_form
from app.console.templating import templates
from app.identity.dev_issuer import DevIssuer
from app.identity.loopback import names_this_machine
from app.identity.principal import Role
from app.identity.settings import DEV_ISSUER_PATH
from app.logs import get_logger

log = get_logger("voicelog.console")

CODE_TTL = timedelta(minutes=1)
TRANSACTION_TTL = timedelta(minutes=10)
TOKEN_TTL = timedelta(hours=8)
CALLBACK_PATH = "/console/callback"
_PKCE = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
_SUBJECT = re.compile(r"^[\x21-\x7e]{1,128}$")
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
_CAPACITY = 1000
LOOPBACK_ONLY = ("The dev issuer signs in loopback browsers only, addressing this machine as localhost or by a "
                 "loopback address (or, with the local development SAW, browsers on this machine through its "
                 "nginx: `voicelog dev saw`).")


def s256(verifier: str) -> str:
    """The PKCE S256 challenge of `verifier` (RFC 7636)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class Authorization:
    """One sign-in in progress: what the browser asked for (and, once the form is sent, who it is)."""

    client_id: str
    redirect_uri: str
    state: str
    code_challenge: str
    nonce: str
    created: datetime
    subject: str = ""
    roles: tuple[str, ...] = ()
    tenant: str | None = None
    name: str | None = None


class _Expiring:
    """A small bounded map of one-time values with a lifetime."""

    def __init__(self, ttl: timedelta) -> None:
        self.ttl = ttl
        self.items: OrderedDict[str, Authorization] = OrderedDict()

    def put(self, value: Authorization) -> str:
        key = secrets.token_urlsafe(32)
        self.items[key] = value
        while len(self.items) > _CAPACITY:
            self.items.popitem(last=False)
        return key

    def take(self, key: str | None, now: datetime) -> Authorization | None:
        """Once only: a replayed key finds nothing."""
        value = self.items.pop(key, None) if key else None
        return value if value is not None and now - value.created <= self.ttl else None


def _from_loopback(request: Request, saw: SawSettings) -> bool:
    """A browser on this machine: a loopback peer with no proxy headers, or (local development SAW only) the
    local SAW's nginx, a trusted loopback proxy, reporting a loopback browser in `X-Real-IP`."""
    peer = request.client.host if request.client else None
    if not any(h in request.headers for h in _PROXY_HEADERS):
        return _is_loopback(peer)
    if not saw.local_dev or any(h in request.headers for h in ("forwarded", "x-forwarded-for")):
        return False
    real = request.headers.getlist("x-real-ip")
    return (len(real) == 1 and _is_loopback(real[0])
            and is_trusted_peer(peer, (), saw.trusted_proxies) and _is_loopback(peer))


def _is_loopback(host: str | None) -> bool:
    try:
        return ipaddress.ip_address((host or "").strip()).is_loopback
    except ValueError:
        return False


def _oauth_error(error: str, description: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status,
                        headers={"cache-control": "no-store"})


def build_dev_login_router(issuer: DevIssuer, clock: Clock, saw: SawSettings) -> APIRouter:
    """The sign-in form and token endpoint; `saw` says which proxy may relay a browser (the local SAW's)."""
    router = APIRouter(prefix=DEV_ISSUER_PATH, tags=["dev issuer"], include_in_schema=False)
    pending = _Expiring(TRANSACTION_TTL)
    codes = _Expiring(CODE_TTL)
    roles = [r.value for r in Role]

    def refuse(request: Request, message: str, status: int = 400) -> Response:
        return templates.TemplateResponse(request, "dev_login_error.html", {"message": message},
                                          status_code=status)

    def from_this_machine(request: Request) -> bool:
        """A browser on this machine (directly, or through the local SAW) that names this machine in its URL."""
        origin = urlsplit(public_origin(request, saw.trusted_proxies)).netloc
        return _from_loopback(request, saw) and names_this_machine(origin, issuer.issuer)

    @router.get("/authorize")
    async def authorize(request: Request) -> Response:
        if not from_this_machine(request):
            return refuse(request, LOOPBACK_ONLY, 403)
        q = request.query_params
        redirect_uri = q.get("redirect_uri", "")
        target = urlsplit(redirect_uri)
        origin = public_origin(request, saw.trusted_proxies)
        if (target.path != CALLBACK_PATH or f"{target.scheme}://{target.netloc}" != origin or target.query
                or target.fragment):
            return refuse(request, "Unknown redirect_uri: the dev issuer only returns to this console.")
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
            return refuse(request, "Only response_type=code with PKCE (S256) is supported.")
        challenge, state = q.get("code_challenge", ""), q.get("state", "")
        if not _PKCE.fullmatch(challenge) or not 16 <= len(state) <= 256 or not q.get("client_id"):
            return refuse(request, "client_id, state and a code_challenge are required.")
        transaction = pending.put(Authorization(
            client_id=q["client_id"][:128], redirect_uri=redirect_uri, state=state, code_challenge=challenge,
            nonce=q.get("nonce", "")[:256], created=clock.now()))
        return templates.TemplateResponse(request, "dev_login.html", {"transaction": transaction, "roles": roles})

    @router.post("/authorize")
    async def sign_in(request: Request) -> Response:
        if not from_this_machine(request):
            return refuse(request, LOOPBACK_ONLY, 403)
        form = await read_form(request)
        started = pending.take(first(form, "transaction"), clock.now())
        if started is None:  # the transaction id doubles as the form's CSRF token
            return refuse(request, "This sign-in form expired or was already used; start again.", 403)
        subject = (first(form, "subject") or "").strip()
        tenant = (first(form, "tenant") or "").strip() or None
        chosen = tuple(sorted({r for r in form.get("roles", []) if r in roles}))
        if not _SUBJECT.fullmatch(subject) or (tenant is not None and not _TENANT.fullmatch(tenant)):
            return refuse(request, "A subject (printable, no spaces) is required; a tenant is letters and digits.")
        name = (first(form, "name") or "").strip()[:256] or None
        code = codes.put(Authorization(**{**started.__dict__, "subject": subject, "roles": chosen,
                                          "tenant": tenant, "name": name, "created": clock.now()}))
        log.info("console.dev_login.code_issued", roles=list(chosen))
        query = urlencode({"code": code, "state": started.state})
        return RedirectResponse(f"{started.redirect_uri}?{query}", status_code=303)

    @router.post("/oauth2/token")
    async def token(request: Request) -> Response:
        form = await read_form(request)
        if first(form, "grant_type") != "authorization_code":
            return _oauth_error("unsupported_grant_type", "Only authorization_code is supported.")
        granted = codes.take(first(form, "code"), clock.now())
        verifier = first(form, "code_verifier") or ""
        if (granted is None or first(form, "client_id") != granted.client_id
                or first(form, "redirect_uri") != granted.redirect_uri or not _PKCE.fullmatch(verifier)
                or not hmac.compare_digest(s256(verifier).encode(), granted.code_challenge.encode())):
            return _oauth_error("invalid_grant", "The code is unknown, used, expired, or the PKCE verifier is wrong.")
        access_token = issuer.sign(_claims(issuer, granted, clock.now()))
        return JSONResponse({"access_token": access_token, "token_type": "Bearer",
                             "expires_in": int(TOKEN_TTL.total_seconds())}, headers={"cache-control": "no-store"})

    return router


def _claims(issuer: DevIssuer, granted: Authorization, now: datetime) -> dict[str, Any]:
    at = int(now.timestamp())
    claims: dict[str, Any] = {"iss": issuer.issuer, "aud": issuer.audience, "sub": granted.subject, "iat": at,
                              "nbf": at, "exp": at + int(TOKEN_TTL.total_seconds()),
                              "jti": secrets.token_urlsafe(16), "roles": list(granted.roles),
                              "azp": granted.client_id}
    if granted.nonce:
        claims["nonce"] = granted.nonce
    if granted.tenant is not None:
        claims["tid"] = granted.tenant
    if granted.name is not None:
        claims["name"] = granted.name
    return claims
