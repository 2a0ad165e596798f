"""Which SAW a request comes from (C5). nginx terminates mutual TLS with the SAW CA; voicelog believes its
headers only when the TCP peer is a configured proxy, and ignores (and strips) them from anyone else.

A peer address is not believed either when it also appears in `X-Forwarded-For`: uvicorn (with proxy
headers on, its default) rewrites the peer from that header, so a forged `X-Forwarded-For` naming the proxy
would otherwise pass for the proxy itself. A genuine proxy never lists its own address there.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from app.access.saw.models import Saw
from app.access.saw.service import find_saw_by_fingerprint
from app.access.saw.settings import SawSettings
from app.errors import Forbidden
from app.logs import get_logger

log = get_logger("voicelog.access.saw")

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

MAX_CERT_HEADER_CHARS = 16 * 1024
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
_XFF = b"x-forwarded-for"


class SawRequired(Forbidden):
    code = "saw_required"
    title = "This needs a registered secure access workstation of yours"


def _address(host: str | None) -> IPAddress | None:
    if not host:
        return None
    try:
        address = ip_address(host.strip().removeprefix("[").split("]")[0])
    except ValueError:
        return None
    # A dual-stack listener sees an IPv4 proxy as ::ffff:a.b.c.d: the same host, compared as IPv4.
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _forwarded_for(values: Iterable[str]) -> set[IPAddress]:
    """Every address named in `X-Forwarded-For` (`1.2.3.4`, `1.2.3.4:5`, `[::1]:5`, `::1`)."""
    found: set[IPAddress] = set()
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if item.count(":") == 1:  # IPv4 with a port
                item = item.split(":")[0]
            address = _address(item)
            if address is not None:
                found.add(address)
    return found


def is_trusted_peer(client_host: str | None, forwarded_for: Iterable[str], trusted: Sequence[IPNetwork]) -> bool:
    """The TCP peer is a configured proxy and was not taken from a forwarding header."""
    peer = _address(client_host)
    if peer is None or not any(peer in net for net in trusted):
        return False
    return peer not in _forwarded_for(forwarded_for)


def _only(values: list[str]) -> str | None:
    """A header's value, when it was sent exactly once (duplicates are a forgery attempt or a bug)."""
    return values[0] if len(values) == 1 else None


def fingerprint_of_cert_header(value: str) -> str | None:
    """SHA-256 (hex) of the DER of the one certificate in a URL-escaped PEM header, or None."""
    if not value or len(value) > MAX_CERT_HEADER_CHARS:
        return None
    pem = unquote(value)
    if pem.count(_PEM_BEGIN) != 1:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None
    return cert.fingerprint(hashes.SHA256()).hex()


def normalize_fingerprint(value: str) -> str | None:
    """`AB:CD:...` or `abcd...` -> 64 lowercase hex digits, or None."""
    candidate = value.strip().replace(":", "").lower()
    return candidate if _FINGERPRINT.fullmatch(candidate) else None


def saw_fingerprint(request: HTTPConnection, settings: SawSettings) -> str | None:
    """The SHA-256 of the client certificate the proxy verified, or None when the request is not from a
    trusted proxy, the proxy did not report `SUCCESS`, or the header is missing, repeated or malformed."""
    headers = request.headers
    client_host = request.client.host if request.client else None
    if not is_trusted_peer(client_host, headers.getlist(_XFF.decode()), settings.trusted_proxies):
        if any(h.decode() in headers for h in settings.header_names()):
            log.warning("saw.headers.ignored", peer=client_host)
        return None
    if _only(headers.getlist(settings.verify_header)) != "SUCCESS":
        return None
    if settings.fingerprint_source == "cert":
        value = _only(headers.getlist(settings.cert_header))
        return fingerprint_of_cert_header(value) if value is not None else None
    value = _only(headers.getlist(settings.fingerprint_header))
    return normalize_fingerprint(value) if value is not None else None


async def current_saw(*, session: AsyncSession, request: HTTPConnection, owner_subject: str,
                      settings: SawSettings) -> Saw | None:
    """The registered, unrevoked SAW this request comes from, if it is bound to `owner_subject`; else None."""
    return await saw_of_fingerprint(session=session, fingerprint=saw_fingerprint(request, settings),
                                    owner_subject=owner_subject)


async def saw_of_fingerprint(*, session: AsyncSession, fingerprint: str | None, owner_subject: str) -> Saw | None:
    """The registered, unrevoked SAW of `fingerprint` (from `saw_fingerprint`, resolved at the HTTP edge), if
    it is bound to `owner_subject`; else None."""
    if fingerprint is None:
        return None
    saw = await find_saw_by_fingerprint(session=session, cert_sha256=fingerprint)
    if saw is None or saw.revoked:
        return None
    if not hmac.compare_digest(saw.cert_sha256.encode(), fingerprint.encode()):
        return None
    if not hmac.compare_digest(saw.owner_subject.encode(), owner_subject.encode()):
        log.warning("saw.owner_mismatch", saw=saw.id)
        return None
    return saw


async def require_current_saw(*, session: AsyncSession, request: HTTPConnection, owner_subject: str,
                              settings: SawSettings) -> Saw:
    """`current_saw`, or 403 `saw_required`."""
    saw = await current_saw(session=session, request=request, owner_subject=owner_subject, settings=settings)
    if saw is None:
        raise SawRequired()
    return saw


class SawHeaderGuard:
    """ASGI middleware: removes the SAW headers from every request that is not from a trusted proxy, so no
    code (nor a log of headers) can ever act on a forged one. `saw_fingerprint` checks again regardless."""

    def __init__(self, app: ASGIApp, settings: SawSettings) -> None:
        self.app = app
        self.settings = settings
        self.names = settings.header_names()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers: list[tuple[bytes, bytes]] = scope["headers"]
            client = scope.get("client")
            forwarded = [v.decode("latin-1") for k, v in headers if k == _XFF]
            if (any(k in self.names for k, _ in headers)
                    and not is_trusted_peer(client[0] if client else None, forwarded, self.settings.trusted_proxies)):
                log.warning("saw.headers.stripped", peer=client[0] if client else None)
                scope = dict(scope, headers=[(k, v) for k, v in headers if k not in self.names])
        await self.app(scope, receive, send)
