"""Security headers for the console's pages, form parsing with a CSRF check on every POST, and the origin the
browser used (forwarded headers believed from trusted proxies only)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network
from urllib.parse import parse_qs

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.access.saw.trust import is_trusted_peer
from app.console.sessions import ConsoleSession
from app.errors import AppError, Forbidden

# No inline script or style anywhere; audio plays from blob: URLs the page builds from fetched WAVs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
)
GUARDED_PREFIXES = ("/console", "/dev/oidc/authorize")
MAX_FORM_BYTES = 64 * 1024


class ConsoleSecurityHeaders:
    """ASGI middleware: every response under the console's paths carries the headers above (and no-store
    on pages, so a shared machine's back button shows nothing after sign-out)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(GUARDED_PREFIXES):
            await self.app(scope, receive, send)
            return
        static = path.startswith("/console/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _REPLACED]
                headers.extend(SECURITY_HEADERS)
                if not static and not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


_REPLACED = frozenset(k for k, _ in SECURITY_HEADERS)


class CsrfRejected(Forbidden):
    code = "csrf_rejected"
    title = "The form is stale or did not come from this console; reload the page and try again"


class FormTooLarge(AppError):
    status = 413
    code = "form_too_large"
    title = "The form is too large"


async def read_form(request: Request) -> dict[str, list[str]]:
    """An urlencoded form body (no multipart: the console never uploads files)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise FormTooLarge()
    return parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True, max_num_fields=200)


async def checked_form(request: Request, session: ConsoleSession) -> dict[str, list[str]]:
    """The form, once its CSRF token matches this session's (constant-time); else 403."""
    form = await read_form(request)
    if not session.csrf_ok(first(form, "csrf")):
        raise CsrfRejected()
    return form


def first(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


_FORWARDED_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?$")


def _forwarded_once(request: Request, name: str) -> str | None:
    values = request.headers.getlist(name)
    return values[0].strip() if len(values) == 1 else None


def public_origin(request: Request, trusted_proxies: Sequence[IPv4Network | IPv6Network]) -> str:
    """`scheme://host[:port]` as the browser sees this service, for the sign-in's redirect URI.

    Behind a trusted proxy (the SAW's nginx, `saw.trusted_proxies`) it is its `X-Forwarded-Proto` and
    `X-Forwarded-Host`, each sent once and well-formed; from any other peer those headers are ignored and the
    request's own scheme and Host are used, so no one can move a sign-in to another origin by a header.
    """
    own = f"{request.url.scheme}://{request.url.netloc}"
    client = request.client.host if request.client else None
    if not is_trusted_peer(client, request.headers.getlist("x-forwarded-for"), trusted_proxies):
        return own
    proto, host = _forwarded_once(request, "x-forwarded-proto"), _forwarded_once(request, "x-forwarded-host")
    if proto not in ("http", "https") or host is None or not _FORWARDED_HOST.fullmatch(host):
        return own
    return f"{proto}://{host}"
